"""The models the SnD paper compares with, behind `SnDModel`'s output contract (`feature_map`, `pooler_output`).

    from snd_hf.baselines import load_baseline
    dinov2 = load_baseline("dinov2_vits14.pth")                  # torch.hub DINOv2, also *_reg
    fit3d = load_baseline("fit3d_dinov2_small.pth")             # FiT3D: timm's layout, also reg4
    mef = load_baseline("dinov2_small.ckpt", base="dinov2_vits14.pth")   # MEF: LoRA + refine_conv on a base

DINOv2 (with or without registers), FiT3D (ywyue/FiT3D: full fine-tuned weights in timm's
`vit_*_patch14_dinov2` layout) and SnD itself are plain ViT weights: `SnDModel.from_original_checkpoint`
loads them. MEF ("Multiview Equivariance Improves 3D Correspondence Understanding with Minimal Feature
Finetuning", qq456cvb/3DCorrEnhance, `finetune.py`) is a PyTorch Lightning `.ckpt` that holds only what
it trained, on top of a torch.hub DINOv2 it fetched at load time, which the user gives here as `base`:

- `w_a_{i:03d}` [r, C] and `w_b_{i:03d}` [C, r], i = 0 .. 2K-1: a LoRA of scale 1 (no alpha / r) on the
  fused `qkv` projection of the last K blocks (K = 4), pairs in block order, q then v per block:
  `qkv(x)[..., :C] += w_b_{2k} @ w_a_{2k} x` and `qkv(x)[..., 2C:] += w_b_{2k+1} @ w_a_{2k+1} x` in block
  L - K + k; keys get no update. Merged here into `qkv.weight` (bias unchanged).
- `state_dict["refine_conv"]`: a 3x3 convolution C -> C (padding 1) applied to the final-norm patch
  tokens as a map: MEF's dense features. The CLS token and the hidden states are the ViT's, unrefined.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .configuration_snd import SnDConfig
from .loading.conversion import check_state_dict, convert_original_state_dict
from .loading.errors import CheckpointError
from .loading.original import read_original_checkpoint
from .loading.reading import check_finite, read_checkpoint_file
from .loading.sidecar import original_checkpoint_config
from .modeling_snd import SnDModel, SnDModelOutput

__all__ = ["MEFModel", "is_mef_checkpoint", "load_baseline", "load_mef"]

_MEF_LORA = re.compile(r"w_(?P<matrix>[ab])_(?P<index>\d{3})\Z")


class MEFModel(SnDModel):
    """A DINOv2 ViT with MEF's LoRA merged into its weights and MEF's `refine_conv` on its dense features.

    `forward` returns `SnDModel`'s outputs with `feature_map` = refine_conv(final-norm patch map); the
    other outputs (tokens, CLS, hidden states) are the ViT's. Build it with `load_mef`.
    """

    def __init__(self, config: SnDConfig) -> None:
        super().__init__(config)
        self.refine_conv = nn.Conv2d(config.hidden_size, config.hidden_size, kernel_size=3, stride=1, padding=1)

    def forward(self, pixel_values: torch.Tensor, *args, return_dict: bool | None = None, **kwargs) -> SnDModelOutput | tuple:
        """`SnDModel.forward`, then `feature_map` [B, C, h, w] refined by the 3x3 convolution."""
        output = super().forward(pixel_values, *args, return_dict=True, **kwargs)
        output.feature_map = self.refine_conv(output.feature_map)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return output if return_dict else output.to_tuple()


def is_mef_checkpoint(checkpoint: object) -> bool:
    """Whether a loaded checkpoint object holds MEF's top-level LoRA tensors (`w_a_000`, ...)."""
    return isinstance(checkpoint, Mapping) and any(_MEF_LORA.match(str(key)) for key in checkpoint)


def _mef_weights(checkpoint: Mapping, path: Path) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
    """MEF's LoRA pairs [(w_a [r, C], w_b [C, r]), ...] in index order and refine_conv's {weight, bias}."""
    lora: dict[str, dict[int, torch.Tensor]] = {"a": {}, "b": {}}
    for key, value in checkpoint.items():
        if match := _MEF_LORA.match(str(key)):
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{path}: MEF's {key} is a {type(value).__name__}, not a tensor")
            lora[match["matrix"]][int(match["index"])] = value
    count = len(lora["a"])
    if set(lora["a"]) != set(range(count)) or set(lora["b"]) != set(range(count)) or count % 2:
        raise CheckpointError(
            f"{path}: MEF's LoRA needs w_a_000.. and w_b_000.. numbered alike from 0, two (q, v) per block; found"
            f" w_a {sorted(lora['a'])} and w_b {sorted(lora['b'])}"
        )
    state = checkpoint.get("state_dict")
    refine = state.get("refine_conv") if isinstance(state, Mapping) else None
    if isinstance(state, Mapping) and refine is None:  # a flattened {"refine_conv.weight": ...}
        refine = {key.removeprefix("refine_conv."): value for key, value in state.items() if str(key).startswith("refine_conv.")}
    if not isinstance(refine, Mapping) or set(refine) != {"weight", "bias"}:
        raise CheckpointError(
            f"{path}: MEF checkpoint without state_dict['refine_conv'] {{weight, bias}} (found"
            f" {sorted(map(str, refine)) if isinstance(refine, Mapping) else None}); the file is incomplete: download it again"
        )
    pairs = [(lora["a"][i], lora["b"][i]) for i in range(count)]
    check_finite({f"w_a_{i:03d}": a for i, (a, _) in enumerate(pairs)} | {f"w_b_{i:03d}": b for i, (_, b) in enumerate(pairs)}, str(path))
    check_finite({f"refine_conv.{key}": value for key, value in refine.items()}, str(path))
    return pairs, dict(refine)


def _merge_mef_lora(state_dict: dict[str, torch.Tensor], pairs: list[tuple[torch.Tensor, torch.Tensor]], path: Path) -> dict[str, torch.Tensor]:
    """torch.hub-layout `state_dict` with MEF's LoRA `pairs` merged into the q and v rows of the last
    len(pairs) / 2 blocks' `attn.qkv.weight` (module docstring)."""
    blocks = sorted({int(match[1]) for key in state_dict if (match := re.match(r"blocks\.(\d+)\.attn\.qkv\.weight\Z", key))})
    tuned = len(pairs) // 2
    if tuned > len(blocks):
        raise CheckpointError(f"{path}: MEF's LoRA covers {tuned} blocks, the base ViT has {len(blocks)}")
    merged = dict(state_dict)
    for k, block in enumerate(blocks[-tuned:]):
        key = f"blocks.{block}.attn.qkv.weight"
        weight = merged[key].clone()
        width = weight.shape[1]
        for (w_a, w_b), rows in zip(pairs[2 * k : 2 * k + 2], (slice(0, width), slice(2 * width, 3 * width))):
            rank = w_a.shape[0]
            check_state_dict(
                {"w_a": w_a, "w_b": w_b}, {"w_a": (rank, width), "w_b": (width, rank)}, [], f"{path}: MEF's LoRA of block {block}"
            )
            # Deviation (docs/deviations.md, 40): merged into qkv; MEF adds B (A x) to the q and v outputs.
            weight[rows] += w_b.to(weight.dtype) @ w_a.to(weight.dtype)
        merged[key] = weight
    return merged


def load_mef(path: str | os.PathLike, base: str | os.PathLike, **config_overrides) -> MEFModel:
    """MEF from its Lightning `.ckpt` (read with weights_only=True) and the DINOv2 weights it was trained on.

    Args:
        path: MEF's checkpoint (e.g. `dinov2_small.ckpt`).
        base: the torch.hub DINOv2 weights MEF fetched at load (`dinov2_vits14.pth`, or `dinov2_vits14_reg4`
            weights for a MEF trained with registers), any layout `read_original_checkpoint` reads.
        config_overrides: `SnDConfig` fields for the base (e.g. `num_attention_heads`).
    Returns:
        the `MEFModel`, eval mode; its resize is the base's torch.hub one, as in MEF's forward.
    Raises:
        CheckpointError: not a MEF checkpoint, LoRA or refine_conv shapes that do not fit the base (named).
    """
    path, base = Path(path), Path(base)
    checkpoint = read_checkpoint_file(path)
    if not is_mef_checkpoint(checkpoint):
        raise CheckpointError(f"{path} is not a MEF checkpoint (no top-level w_a_000 / w_b_000 LoRA tensors); load it without base=")
    pairs, refine = _mef_weights(checkpoint, path)
    original = read_original_checkpoint(base)
    config = original_checkpoint_config(base, original.state_dict, original.config_defaults, **config_overrides)
    state_dict = convert_original_state_dict(_merge_mef_lora(original.state_dict, pairs, path), config)
    width = config.hidden_size
    check_state_dict(
        refine, {"weight": (width, width, 3, 3), "bias": (width,)}, [], f"{path}: MEF's refine_conv for the {width}-wide base {base}"
    )
    state_dict.update({f"refine_conv.{key}": value for key, value in refine.items()})
    with torch.device("meta"):
        model = MEFModel(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def load_baseline(path: str | os.PathLike, base: str | os.PathLike | None = None, **config_overrides) -> SnDModel:
    """Any model of the paper's comparison from its published file (module docstring).

    Args:
        path: a MEF `.ckpt` (then `base` is required), or DINOv2 / DINOv2-reg / FiT3D / SnD weights in a
            layout `SnDModel.from_original_checkpoint` reads.
        base: the DINOv2 weights under a MEF checkpoint; None for the others.
        config_overrides: `SnDConfig` fields (e.g. `num_attention_heads`, the resize fields).
    Raises:
        CheckpointError / ValueError: a MEF checkpoint without `base`, or `base` given for full weights.
    """
    path = Path(path)
    if base is not None:
        return load_mef(path, base, **config_overrides)
    return SnDModel.from_original_checkpoint(path, **config_overrides)
