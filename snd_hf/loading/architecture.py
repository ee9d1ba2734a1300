"""The architecture <-> tensor shapes of the torch.hub DINOv2 format: every key and shape of a config
(`original_shapes`), and a config read back from a state dict's shapes (`infer_config_from_original`)."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from ..configuration_snd import SND_VARIANTS, SnDConfig
from .errors import CheckpointError, listing
from .keymap import FORWARD, rename
from .layouts import layout_hint

# Widths of the published DINOv2 ViTs (S, B, L, g), all with 64-wide heads.
PUBLISHED_WIDTHS: tuple[int, ...] = (384, 768, 1024, 1536)
# The SnDConfig fields that decide the weights' keys and shapes (`original_shapes`).
SHAPE_FIELDS: tuple[str, ...] = (
    "hidden_size", "num_hidden_layers", "mlp_ratio", "patch_size", "image_size", "num_channels", "qkv_bias", "use_swiglu_ffn",
    "num_register_tokens",
)

_LAYER_KEY = re.compile(r"(?:encoder\.layer|blocks)\.(\d+)\.")
_WIDTH_KEYS = ("embeddings.cls_token", "cls_token")  # snd-hf and original names; [1, 1, width]
_VIT_NAMES = {"small": "ViT-S", "base": "ViT-B"}


def shape_of(value: Any) -> tuple[int, ...]:
    """The shape of a tensor, or a shape given as a sequence (a safetensors header's)."""
    return tuple(value.shape if isinstance(value, torch.Tensor) else value)


def _architecture(shapes: Mapping[str, Any]) -> tuple[int, int] | None:
    """(width, layers) of a state dict in either naming, or None when it holds no class token."""
    width = next((shape_of(shapes[key])[-1] for key in _WIDTH_KEYS if key in shapes), None)
    if width is None:
        return None
    return width, len({int(match.group(1)) for key in shapes if (match := _LAYER_KEY.match(key))})


def check_architecture(state_dict: Mapping[str, Any], expected: Mapping[str, Any], what: str, layers: int | None) -> None:
    """One line when the weights are another width than the config: every tensor would be listed as
    misshaped. (Another depth alone keeps the listing, whose summary names the layers.)"""
    found, wanted = _architecture(state_dict), _architecture(expected)
    if found is None or wanted is None or found[0] == wanted[0]:
        return
    wanted = (wanted[0], wanted[1] if layers is None else layers)
    name = next((_VIT_NAMES[size] for size, fields in SND_VARIANTS.items()
                 if (fields["hidden_size"], fields["num_hidden_layers"]) == wanted), None)  # fmt: skip
    says = f"{name} {wanted}" if name else f"{wanted[0]} wide with {wanted[1]} layers"
    raise CheckpointError(
        f"{what}: this checkpoint is {found[0]} wide with {found[1]} layers; the config says {says}: "
        "build the config from the checkpoint (e.g. SnDConfig.from_pretrained(DIR, out_indices=[...]))"
    )


def original_shapes(config: SnDConfig, num_layers: int | None = None) -> dict[str, tuple[int, ...]]:
    """Every key and shape of the torch.hub DINOv2 state dict of architecture `config` (the file format).

    The format is fixed by facebookresearch/dinov2 (`DinoVisionTransformer`); `SnDModel`'s parameters
    map onto it one to one through `ORIGINAL_TO_HF` (tests/test_loading.py checks both against the
    real ViT-S/B manifests and the model). `num_layers` lists only the first blocks (default: all).
    """
    width, grid = config.hidden_size, config.grid_size
    hidden = int(width * config.mlp_ratio)
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, width),
        "pos_embed": (1, 1 + grid * grid, width),
        **({"register_tokens": (1, config.num_register_tokens, width)} if config.num_register_tokens else {}),
        "mask_token": (1, width),
        "patch_embed.proj.weight": (width, config.num_channels, config.patch_size, config.patch_size),
        "patch_embed.proj.bias": (width,),
    }
    if config.use_swiglu_ffn:  # dinov2's SwiGLUFFNFused: 2/3 of the MLP width, rounded up to a multiple of 8
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        mlp = {"w12.weight": (2 * hidden, width), "w12.bias": (2 * hidden,), "w3.weight": (width, hidden), "w3.bias": (width,)}
    else:
        mlp = {"fc1.weight": (hidden, width), "fc1.bias": (hidden,), "fc2.weight": (width, hidden), "fc2.bias": (width,)}
    for i in range(config.num_hidden_layers if num_layers is None else num_layers):
        block = {
            "norm1.weight": (width,),
            "norm1.bias": (width,),
            "attn.qkv.weight": (3 * width, width),
            **({"attn.qkv.bias": (3 * width,)} if config.qkv_bias else {}),
            "attn.proj.weight": (width, width),
            "attn.proj.bias": (width,),
            "ls1.gamma": (width,),
            "norm2.weight": (width,),
            "norm2.bias": (width,),
            **{f"mlp.{name}": shape for name, shape in mlp.items()},
            "ls2.gamma": (width,),
        }
        shapes.update({f"blocks.{i}.{name}": shape for name, shape in block.items()})
    shapes.update({"norm.weight": (width,), "norm.bias": (width,)})
    return shapes


def _require(state_dict: Mapping[str, torch.Tensor], key: str, source: str | None) -> torch.Tensor:
    """state_dict[key], or a CheckpointError naming the keys that are not DINOv2 ViT keys."""
    if key in state_dict:
        return state_dict[key]
    _, unknown = rename(state_dict, FORWARD)
    hint = layout_hint(unknown)
    raise CheckpointError(
        f"{source or 'state dict'}: cannot infer the architecture: key {key!r} is missing (not a DINOv2 ViT state"
        f" dict?); keys it does not understand ({len(unknown)}): {listing(sorted(unknown)) or 'none'}"
        + (f"; {hint}" if hint else "")
    )


def _shape_fields(state_dict: Mapping[str, torch.Tensor], source: str | None = None) -> dict[str, Any]:
    """The `SnDConfig` fields the tensor shapes determine (everything but the head count and the
    fields that change no shape): `SHAPE_FIELDS`."""
    hidden_size = _require(state_dict, "cls_token", source).shape[-1]
    blocks = {int(match.group(1)) for key in state_dict if (match := re.match(r"blocks\.(\d+)\.", key))}
    if not blocks:
        _require(state_dict, "blocks.0.attn.qkv.weight", source)
    patch = _require(state_dict, "patch_embed.proj.weight", source)
    num_positions = _require(state_dict, "pos_embed", source).shape[1] - 1
    grid = int(round(num_positions**0.5))
    if grid * grid != num_positions:
        class_free = math.isqrt(num_positions + 1) ** 2 == num_positions + 1
        hint = (
            ": it has no class slot, timm's register layout (reg_token); read the file with load_original_checkpoint,"
            " which converts it"
            if class_free
            else ""
        )
        raise CheckpointError(f"{source or 'state dict'}: pos_embed has {num_positions} patch positions, not a square grid{hint}")
    swiglu = "blocks.0.mlp.w12.weight" in state_dict
    if swiglu:
        mlp_ratio = state_dict["blocks.0.mlp.w12.weight"].shape[0] / 2 * 3 / 2 / hidden_size
    else:
        mlp_ratio = _require(state_dict, "blocks.0.mlp.fc1.weight", source).shape[0] / hidden_size
    return {
        "hidden_size": hidden_size,
        "num_hidden_layers": max(blocks) + 1,
        "mlp_ratio": int(mlp_ratio) if float(mlp_ratio).is_integer() else mlp_ratio,
        "patch_size": patch.shape[-1],
        "image_size": grid * patch.shape[-1],
        "num_channels": patch.shape[1],
        "qkv_bias": "blocks.0.attn.qkv.bias" in state_dict,
        "use_swiglu_ffn": swiglu,
        "num_register_tokens": state_dict["register_tokens"].shape[1] if "register_tokens" in state_dict else 0,
    }


def infer_config_from_original(state_dict: Mapping[str, torch.Tensor], source: str | None = None, **overrides) -> SnDConfig:
    """An `SnDConfig` for an original-layout state dict, read from its tensor shapes.

    hidden size from `cls_token`, layers from the `blocks.{i}` indices, MLP ratio from `fc1` (or SwiGLU
    from `w12`), patch size from the patch projection, `image_size` from the position grid. The head
    count is not in the shapes: it is `num_attention_heads` from `overrides`, else hidden / 64 (the
    DINOv2 head width), with a warning when the width is not a published ViT's (`PUBLISHED_WIDTHS`),
    since a wrong count changes the features without any error.

    Args:
        source: names the checkpoint in the warning.
    Raises:
        CheckpointError: naming a missing essential key and every key it does not understand.
    """
    fields = _shape_fields(state_dict, source)
    if "num_attention_heads" not in overrides:
        width = fields["hidden_size"]
        fields["num_attention_heads"] = max(width // 64, 1)
        if width not in PUBLISHED_WIDTHS:
            warnings.warn(
                f"{source or 'checkpoint'}: num_attention_heads={fields['num_attention_heads']} is a guess (hidden size"
                f" {width} / 64): {width} is not the width of a published DINOv2 ViT {PUBLISHED_WIDTHS}, and a wrong"
                " head count changes the features silently. Pass num_attention_heads= (snd convert --num-heads), or"
                " keep the .json sidecar that snd-hf writes beside its .pth exports.",
                stacklevel=2,
            )
    return SnDConfig(**{**fields, **overrides})
