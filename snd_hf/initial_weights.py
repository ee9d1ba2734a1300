"""The backbone a training run starts from, rebuilt from its settings alone.

The trainer builds its student on it (``snd_hf.training.builders``) and ``snd eval --model
init:RUN_DIR`` rebuilds it from the run's ``config.yaml`` (:class:`~snd_hf.schema.RunStartSchema`):
both use this module, which sits below evaluation and training, so evaluation never imports the
trainer. ``settings`` is that schema or a ``TrainingConfig``, which has every attribute the schema
names (only those are read, as they are: the trainer's values reach peft and the model unchanged).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import load_file

from .configuration_snd import SnDConfig
from .modeling_snd import SnDModel
from .schema import RunStartSchema, read_yaml, validate

# The packaged 2D-pretrained tiny ViT (training/pretrain_2d.py), the CPU recipe's starting point.
PRETRAINED_2D = Path(__file__).resolve().parent / "assets" / "pretrained_2d"


def initial_backbone(settings: RunStartSchema) -> SnDModel:
    """The starting weights: original torch.hub DINOv2 (``init: original``), an SnD checkpoint
    (``pretrained``), the packaged 2D-pretrained tiny ViT (``pretrained_2d``) or random (``random``,
    drawn right after seeding torch with ``seed``, so they depend on the settings alone).

    Args:
        settings: a :class:`~snd_hf.schema.RunStartSchema` or a ``TrainingConfig``.
    """
    if settings.init == "original":
        return SnDModel.from_original_checkpoint(settings.model_path, size=settings.size)
    if settings.init == "pretrained":
        return SnDModel.from_pretrained(settings.model_path)
    if settings.init == "pretrained_2d":
        # Deviation (CPU recipe: trained parameters and start): a 2D-pretrained stand-in for DINOv2.
        return SnDModel.from_pretrained(PRETRAINED_2D)
    # train.py seeds every generator with the seed just before, so this re-seeding leaves its random
    # stream as it was; it lets initial_run_backbone rebuild the same weights later.
    torch.manual_seed(settings.seed)
    return SnDModel(
        SnDConfig(
            hidden_size=settings.hidden_size,
            num_hidden_layers=settings.num_hidden_layers,
            num_attention_heads=settings.num_attention_heads,
            image_size=224,
        )
    )


def lora_config(settings: RunStartSchema):
    """peft's ``LoraConfig`` of the run (``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_targets``).

    Args:
        settings: a :class:`~snd_hf.schema.RunStartSchema` or a ``TrainingConfig``.
    """
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=settings.lora_targets,
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
        SchemaError: ``config.yaml`` lacks a start key or holds a wrong value, naming the file and key.
        ValueError: the rebuilt weights differ from the run's frozen weights.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training output folder: it has no config.yaml (init: wants a run's output_dir)")
    start = validate(RunStartSchema, read_yaml(config_path), config_path)
    if start.init in ("original", "pretrained") and not (start.model_path and Path(start.model_path).exists()):
        raise FileNotFoundError(
            f"the run in {run_dir} started from model_path {start.model_path!r}, which is not there"
            " (relative paths are taken from the current folder, as when training)"
        )
    backbone = initial_backbone(start).eval()
    final = run_dir / "model.safetensors"
    if start.finetune == "lora" and final.is_file():
        targeted = _lora_targeted_modules(backbone, start)
        trained, rebuilt = load_file(final), backbone.state_dict()
        frozen = [key for key in rebuilt if key.removesuffix(".weight") not in targeted]
        differing = [key for key in frozen if key not in trained or not torch.equal(trained[key], rebuilt[key])]
        if differing:
            raise ValueError(
                f"the initial weights rebuilt from {config_path} differ from the run's frozen weights in {final}"
                f" (at {differing[:3]}): the run did not start from them"
            )
    return backbone


def _lora_targeted_modules(backbone: SnDModel, start: RunStartSchema) -> set[str]:
    """Names of the modules whose weights LoRA adapts (and merging changes) for ``start``."""
    from peft import get_peft_model

    return set(get_peft_model(copy.deepcopy(backbone), lora_config(start)).targeted_module_names)
