"""Build a run's parts from its :class:`TrainingConfig` (shared by train.py and the benchmark)."""

from __future__ import annotations

from pathlib import Path

import torch

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
from .student import BackboneWithHead

# The packaged 2D-pretrained tiny ViT (training/pretrain_2d.py), the CPU recipe's starting point.
PRETRAINED_2D = Path(__file__).resolve().parents[1] / "assets" / "pretrained_2d"


def build_backbone(config: TrainingConfig) -> torch.nn.Module:
    """Starting weights (original torch.hub DINOv2, an SnD checkpoint, the packaged 2D-pretrained
    tiny ViT or random), LoRA-wrapped if asked."""
    if config.init == "original":
        backbone = SnDModel.from_original_checkpoint(config.model_path, size=config.size)
    elif config.init == "pretrained":
        backbone = SnDModel.from_pretrained(config.model_path)
    elif config.init == "pretrained_2d":
        # Deviation (CPU recipe, docs/deviations.md 31): a 2D-pretrained stand-in for DINOv2.
        backbone = SnDModel.from_pretrained(PRETRAINED_2D)
    else:
        backbone = SnDModel(
            SnDConfig(
                hidden_size=config.hidden_size,
                num_hidden_layers=config.num_hidden_layers,
                num_attention_heads=config.num_attention_heads,
                image_size=224,
            )
        )
    if config.finetune == "full":
        return backbone.train()
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_targets,
    )
    return get_peft_model(backbone, lora).train()


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
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.weight_decay,
    )


def build_scheduler(
    config: TrainingConfig, optimizer: torch.optim.Optimizer, num_processes: int = 1
) -> torch.optim.lr_scheduler.OneCycleLR:
    """The original's one-cycle cosine schedule over ``max_steps + 10`` steps (pct_start ``warmup_ratio``).

    accelerate steps a prepared scheduler once per process per optimizer step, hence ``num_processes``.
    """
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.learning_rate,
        total_steps=(config.max_steps + 10) * num_processes,
        pct_start=config.warmup_ratio,
        anneal_strategy="cos",
        cycle_momentum=False,
    )


def build_lifter(config: TrainingConfig) -> Lifter:
    """The frozen lifter: MVSplat from its checkpoint, or lifting with the scenes' depth."""
    if config.lifter == "mvsplat":
        from ..splatting.mvsplat import MVSplatLifter

        lifter = MVSplatLifter.from_checkpoint(config.mvsplat_checkpoint)
    else:
        lifter = DepthLifter()
    return lifter.requires_grad_(False).eval()


def build_splat_teacher(config: TrainingConfig) -> SplatTeacher:
    """Lifting, splatting, blending and resampling of the teacher's context features."""
    return SplatTeacher(
        build_lifter(config),
        blending=config.blending,
        resample=config.resample,
        coverage_threshold=config.coverage_threshold,
        mask_aware=config.mask_aware,
        upsample=config.upsample,
    )


def prepare_scenes(config: TrainingConfig, *, progress: bool = True) -> Path:
    """The scene root: ``dataset_path`` for ScanNet++, generated on first use for synthetic data."""
    if config.dataset == "scannetpp":
        return Path(config.dataset_path)
    return ensure_synthetic_scenes(
        config.dataset_path or Path(config.output_dir) / "scenes",
        num_scenes=config.synthetic_scenes,
        num_frames=config.synthetic_frames,
        height=config.synthetic_size[0],
        width=config.synthetic_size[1],
        seed=config.seed,
        progress=progress,
    )


def build_dataset(config: TrainingConfig, root: Path) -> SceneDataset:
    """Context pairs ``context_gap`` frames apart with targets between them, resized to ``image_size``.

    Only the maps the lifter reads are loaded (depth for the depth lifter); with ``cache_views``
    every decoded view stays in memory.
    """
    source = FolderScenes(root)
    return SceneDataset(
        InMemoryViews(source) if config.cache_views else source,
        fields=("depth",) if config.lifter == "depth" else (),
        num_context=2,
        context_gap=config.context_gap,
        num_targets=config.num_targets,
        target_mode=config.target_mode,
        image_size=tuple(config.image_size),
        near=config.near,
        far=config.far,
        seed=config.seed,
    )
