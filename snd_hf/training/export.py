"""Exports of a trained backbone: native SnD directories and original-layout ``.pth`` files."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from ..files import make_temporary, replace_path
from ..image_processing_snd import SnDImageProcessor
from ..loading import save_original_checkpoint
from ..modeling_snd import SnDModel


def merged_backbone(backbone: nn.Module) -> SnDModel:
    """A plain SnDModel copy of ``backbone`` with any LoRA adapters merged into the weights."""
    if hasattr(backbone, "merge_and_unload"):  # a peft model
        merged = copy.deepcopy(backbone).merge_and_unload()
    else:
        merged = copy.deepcopy(backbone)
    if not isinstance(merged, SnDModel):
        raise TypeError(f"backbone must be an SnDModel or a PeftModel of one, got {type(merged).__name__}.")
    return merged.eval()


def save_native(
    backbone: nn.Module,
    directory: str | Path,
    *,
    training_info: dict[str, Any],
    size: str | None = None,
    blending: bool | None = None,
    image_size: tuple[int, int] | None = None,
) -> Path:
    """Write ``backbone`` (LoRA merged) as a native SnD directory (config, weights, processor), atomically.

    The files are written into a temporary sibling folder and moved in one by one
    (:func:`snd_hf.files.replace_path`), so ``directory`` may already hold other things
    (checkpoints, logs).

    Args:
        backbone: the trained backbone (SnDModel or PeftModel).
        directory: destination; ``SnDModel.from_pretrained(directory)`` loads it.
        training_info: recorded in ``config.training_info`` (the training config and the step).
        size: the published variant's size, or None.
        blending: whether blending was used, or None.
        image_size: the ``(H, W)`` the backbone trained at: its processor resizes the shortest edge
            to ``min(image_size)``, so `AutoImageProcessor` and `pipeline()` feed the model the
            resolution it learnt at (None: the processor's default, 448).
    """
    model = merged_backbone(backbone)
    model.config.training_info = training_info
    model.config.size = size
    model.config.blending = blending
    directory = Path(directory)
    staging = make_temporary(directory, directory=True)
    try:
        if image_size is not None:  # save_pretrained keeps a processor config already in the folder
            SnDImageProcessor(size={"shortest_edge": min(image_size)}).save_pretrained(staging)
        model.save_pretrained(staging)  # with preprocessor_config.json, so AutoImageProcessor and pipeline() work on it
        directory.mkdir(exist_ok=True)
        for item in sorted(staging.iterdir(), key=lambda item: item.name == "config.json"):  # the entry point last
            replace_path(item, directory / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def save_original(backbone: nn.Module, path: str | Path) -> Path:
    """Write ``backbone`` (LoRA merged) as a state dict in the torch.hub DINOv2 key layout, atomically."""
    return save_original_checkpoint(merged_backbone(backbone), path)
