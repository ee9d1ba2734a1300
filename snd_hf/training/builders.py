"""Build a run's parts from its :class:`TrainingConfig` (shared by train.py and the benchmark)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..configuration_snd import SnDConfig
from ..data.memory import InMemoryViews
from ..data.scannetpp import FolderScenes
from ..data.scenes import SceneDataset
from ..data.synthetic import ensure_synthetic_scenes
from ..modeling_snd import SnDModel
from ..splatting.lifters import DepthLifter, Lifter
from ..splatting.teacher import SplatTeacher
from .config import TrainingConfig
from .heads import DINOHead
from .outputs import check_synthetic_dataset_path
from .student import BackboneWithHead

# The packaged 2D-pretrained tiny ViT (training/pretrain_2d.py), the CPU recipe's starting point.
PRETRAINED_2D = Path(__file__).resolve().parents[1] / "assets" / "pretrained_2d"


def initial_backbone(config: TrainingConfig) -> SnDModel:
    """The starting weights: original torch.hub DINOv2 (``init: original``), an SnD checkpoint
    (``pretrained``), the packaged 2D-pretrained tiny ViT (``pretrained_2d``) or random (``random``,
    drawn right after seeding torch with ``config.seed``, so they depend on the config alone)."""
    if config.init == "original":
        return SnDModel.from_original_checkpoint(config.model_path, size=config.size)
    if config.init == "pretrained":
        return SnDModel.from_pretrained(config.model_path)
    if config.init == "pretrained_2d":
        # Deviation (CPU recipe: trained parameters and start): a 2D-pretrained stand-in for DINOv2.
        return SnDModel.from_pretrained(PRETRAINED_2D)
    # train.py seeds every generator with config.seed just before, so this re-seeding leaves its
    # random stream as it was; it lets initial_run_backbone rebuild the same weights later.
    torch.manual_seed(config.seed)
    return SnDModel(
        SnDConfig(
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            image_size=224,
        )
    )


def build_backbone(config: TrainingConfig) -> torch.nn.Module:
    """The initial backbone (:func:`initial_backbone`), LoRA-wrapped if asked."""
    backbone = initial_backbone(config)
    if config.finetune == "full":
        # The mask token only enters masked-image inputs, which SnD never feeds: left trainable it
        # gets no gradient, which DistributedDataParallel refuses.
        backbone.embeddings.mask_token.requires_grad_(False)
        return backbone.train()
    from peft import get_peft_model

    return get_peft_model(backbone, _lora_config(config)).train()


def _lora_config(config: TrainingConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_targets,
    )


def initial_run_backbone(run_dir: str | Path) -> SnDModel:
    """The backbone a training run started from, rebuilt from the ``config.yaml`` in its output folder.

    With LoRA, training never changes the weights that LoRA does not target, so they are compared
    with the run's final student (``model.safetensors``, when the run has finished): any difference
    means the rebuild is not the run's start (e.g. ``model_path`` now holds another file).

    Args:
        run_dir: the run's ``output_dir``. Relative ``model_path`` values are taken from the
            current folder, as when the run was launched.

    Returns:
        the initial backbone, eval mode.

    Raises:
        FileNotFoundError: ``run_dir`` holds no ``config.yaml``, or its ``model_path`` is gone.
        ValueError: the rebuilt weights differ from the run's frozen weights.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training output folder: it has no config.yaml (init: wants a run's output_dir)")
    config = TrainingConfig.from_yaml(config_path)
    if config.init in ("original", "pretrained") and not Path(config.model_path).exists():
        raise FileNotFoundError(
            f"the run in {run_dir} started from model_path {config.model_path!r}, which is not there"
            " (relative paths are taken from the current folder, as when training)"
        )
    backbone = initial_backbone(config).eval()
    final = run_dir / "model.safetensors"
    if config.finetune == "lora" and final.is_file():
        targeted = _lora_targeted_modules(backbone, config)
        trained = load_file(final)
        frozen = [key for key, value in backbone.state_dict().items() if key.removesuffix(".weight") not in targeted]
        differing = [key for key in frozen if key not in trained or not torch.equal(trained[key], backbone.state_dict()[key])]
        if differing:
            raise ValueError(
                f"the initial weights rebuilt from {config_path} differ from the run's frozen weights in {final}"
                f" (at {differing[:3]}): the run did not start from them"
            )
    return backbone


def _lora_targeted_modules(backbone: SnDModel, config: TrainingConfig) -> set[str]:
    """Names of the modules whose weights LoRA adapts (and merging changes) for ``config``."""
    from peft import get_peft_model

    return set(get_peft_model(copy.deepcopy(backbone), _lora_config(config)).targeted_module_names)


def build_student(config: TrainingConfig) -> BackboneWithHead:
    """The trained module: backbone (+ LoRA) and, for loss "dino_head", its DINO head; the teacher
    is its copy (EMA or frozen)."""
    backbone = build_backbone(config)
    if config.loss != "dino_head":
        return BackboneWithHead(backbone, None)
    head = DINOHead(
        backbone.config.hidden_size,
        hidden_dim=config.head_hidden_dim,
        bottleneck_dim=config.head_bottleneck_dim,
        num_prototypes=config.head_prototypes,
    )
    return BackboneWithHead(backbone, head)


def build_optimizer(config: TrainingConfig, student: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW over the student's trained parameters (with weight_decay 0 it is the original's Adam)."""
    return torch.optim.AdamW(
        [p for p in student.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )


def build_lifter(config: TrainingConfig) -> Lifter:
    """The frozen lifter: MVSplat from its checkpoint, or lifting with the scenes' depth."""
    if config.lifter == "mvsplat":
        from ..splatting.mvsplat import MVSplatLifter

        lifter = MVSplatLifter.from_checkpoint(config.mvsplat_checkpoint)
    else:
        lifter = DepthLifter()
    return lifter.requires_grad_(False).eval()


def build_splat_teacher(config: TrainingConfig, patch_size: int, lifter: Lifter | None = None) -> SplatTeacher:
    """Lifting, splatting, blending and resampling of the teacher's context features.

    ``patch_size`` is the student's (its ``config.patch_size``); ``lifter`` replaces the config's
    (benchmarks/bench_train.py passes MVSplat with random weights).
    """
    return SplatTeacher(
        lifter if lifter is not None else build_lifter(config),
        blending=1.0 - config.segment_mean_weight,  # the teacher weighs a pixel's own features
        resample=config.resample,
        coverage_threshold=config.coverage_threshold,
        mask_aware=config.mask_aware,
        upsample=config.upsample,
        patch_size=patch_size,
    )


def prepare_scenes(config: TrainingConfig, *, progress: bool = True) -> Path:
    """The scene root: ``dataset_path`` for ScanNet++, generated on first use for synthetic data.

    Synthetic scenes go to ``dataset_path`` (default ``output_dir/scenes``) only if it is empty or was
    generated by the package: a ValueError instead of replacing anything else.
    """
    if config.dataset == "scannetpp":
        return Path(config.dataset_path)
    root = config.dataset_path or Path(config.output_dir) / "scenes"
    check_synthetic_dataset_path(root)
    return ensure_synthetic_scenes(
        root,
        num_scenes=config.synthetic_scenes,
        num_frames=config.synthetic_frames,
        height=config.synthetic_size[0],
        width=config.synthetic_size[1],
        seed=config.seed,
        progress=progress,
    )


def build_dataset(config: TrainingConfig, root: Path) -> SceneDataset:
    """Context pairs ``context_gap`` (up to ``max_context_gap``) frames apart with targets between them, resized to ``image_size``.

    Only the maps the lifter reads are loaded (depth for the depth lifter); with ``cache_views``
    every decoded view stays in memory.
    """
    source = FolderScenes(root)
    return SceneDataset(
        InMemoryViews(source) if config.cache_views else source,
        fields=("depth",) if config.lifter == "depth" else (),
        num_context=2,
        context_gap=(config.context_gap, config.max_context_gap or config.context_gap),
        num_targets=config.num_targets,
        target_mode=config.target_mode,
        image_size=tuple(config.image_size),
        near=config.near,
        far=config.far,
        seed=config.seed,
    )
