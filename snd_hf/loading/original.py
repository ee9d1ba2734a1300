"""Original-layout checkpoint files in and out: read any recognised layout into torch.hub DINOv2 names
(`read_original_checkpoint`), write `SnDModel` weights as a .pth torch.hub loads, with its sidecar."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..files import atomic_write
from .conversion import to_original_state_dict
from .errors import CheckpointError
from .layouts import (
    LAYOUT_CONFIG_DEFAULTS,
    flatten_block_chunks,
    from_timm_layout,
    from_transformers_layout,
    select_backbone,
    unwrap,
)
from .lora import merge_lora
from .reading import check_finite, read_checkpoint_file
from .sidecar import write_sidecar

if TYPE_CHECKING:
    from torch import nn


@dataclasses.dataclass
class OriginalCheckpoint:
    """An original-layout checkpoint read by `read_original_checkpoint`.

    Attributes:
        state_dict: key -> tensor in the torch.hub DINOv2 naming.
        layout: the layout the file was in: "torch.hub", "timm", "transformers", or one of them + " registers".
    """

    state_dict: dict[str, torch.Tensor]
    layout: str

    @property
    def config_defaults(self) -> dict[str, Any]:
        """`SnDConfig` fields for the position-embedding resize this layout's own forward uses
        (`LAYOUT_CONFIG_DEFAULTS`)."""
        return dict(LAYOUT_CONFIG_DEFAULTS[self.layout])


def load_original_checkpoint(
    path: str | os.PathLike,
    lora_alpha: float | None = None,
    use_rslora: bool = False,
    lora_config: object = None,
) -> dict[str, torch.Tensor]:
    """`read_original_checkpoint(...).state_dict`: the weights in torch.hub DINOv2 names."""
    return read_original_checkpoint(path, lora_alpha, use_rslora, lora_config).state_dict


def read_original_checkpoint(
    path: str | os.PathLike,
    lora_alpha: float | None = None,
    use_rslora: bool = False,
    lora_config: object = None,
) -> OriginalCheckpoint:
    """Read an original-layout DINOv2 / SnD checkpoint into a plain state dict (original key names).

    Recognised layouts, unwrapped explicitly:
    - torch.hub DINOv2 (`dinov2_vits14`, ...) and its register models (`dinov2_vits14_reg`: `register_tokens`);
    - transformers' `Dinov2Model` / `Dinov2WithRegistersModel` weights (separate q, k, v; v5 or v4 names),
      fused into the torch.hub layout;
    - timm's DINOv2 (`vit_small_patch14_dinov2`, FiT3D's checkpoints: no `mask_token`, filled with zeros
      because inference never uses it) and its register models (`vit_small_patch14_reg4_dinov2`: `reg_token`
      and a `pos_embed` without class slot), converted to the torch.hub names;
    - the weights under a dict entry "teacher", "student", "model" or "state_dict" (DINOv2 writes
      `{"teacher": {...}}`; when several are present the first in that order is used, with a warning);
    - key prefixes on every key: `module.` (DDP), `_orig_mod.` (torch.compile), `base_model.model.` (peft);
    - a whole DINOv2 training model: `teacher.*` + `student.*` (the teacher is used), and `backbone.*`
      beside `dino_head.*` / `ibot_head.*` (the backbone is loaded; a warning says the heads were ignored);
    - FSDP block chunks `blocks.{chunk}.{i}.*`, flattened to `blocks.{i}.*` in order;
    - unmerged peft LoRA (`*.base_layer.*`, `*.lora_A/B.<adapter>.*`): merged exactly as peft's
      `merge_and_unload()` (W += scaling * B @ A, conv2d for a k x k Conv2d, scaling alpha / r or
      alpha / sqrt(r) with rsLoRA, `lora_B` bias added to the base bias for `lora_bias=True`,
      adapters in order, `modules_to_save` copies swapped in). The scaling is not in the weights: pass
      `lora_alpha` (+ `use_rslora`) for one adapter, or `lora_config` (peft's adapter_config.json or a
      LoraConfig, or {adapter: config} for several, in merge order; per-module rank/alpha patterns are
      honoured). DoRA, embedding LoRA, AdaLoRA and unknown peft weights are refused by name.
    Anything else, and every non-finite tensor, is a `CheckpointError`; MEF's Lightning checkpoint is
    refused with a pointer to `snd_hf.baselines.load_baseline`.

    Args:
        path: a .pth/.pt/.ckpt (read with weights_only=True) or .safetensors file.
        lora_alpha: LoRA alpha of the one unmerged adapter, if any.
        use_rslora: whether that adapter was trained with rank-stabilised scaling (alpha / sqrt(r)).
        lora_config: the peft config(s) of unmerged adapters, instead of lora_alpha.
    Returns:
        the state dict in the torch.hub DINOv2 naming (not yet checked against an architecture) and the
        layout it came in.
    """
    path = Path(path)
    state_dict, notes = unwrap(read_checkpoint_file(path), path)
    state_dict = select_backbone(state_dict, path, notes)
    state_dict = flatten_block_chunks(state_dict, path)
    check_finite(state_dict, str(path))
    try:
        merged = merge_lora(state_dict, lora_alpha, use_rslora, lora_config)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    if merged is not state_dict:
        check_finite(merged, f"{path} (after merging LoRA)")
    if notes:
        warnings.warn(f"{path}: " + "; ".join(notes), stacklevel=2)
    return OriginalCheckpoint(*(from_transformers_layout(merged, path) or from_timm_layout(merged, path)))


def save_original_checkpoint(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write `model`'s weights as an original-layout state dict (.pth) that torch.hub DINOv2 loads
    with strict=True, and its sidecar (`sidecar_path`: the config the tensors cannot tell, such as the
    head count) that `SnDModel.from_original_checkpoint` and `snd convert` read back. Each file is
    written to a temporary then renamed, so no half-written output remains.
    """
    path = Path(path)
    state_dict = to_original_state_dict(model.state_dict(), model.config)
    state_dict = {key: tensor.detach().cpu().contiguous() for key, tensor in state_dict.items()}
    atomic_write(path, lambda temporary: torch.save(state_dict, temporary))
    write_sidecar(path, model.config)
    return path
