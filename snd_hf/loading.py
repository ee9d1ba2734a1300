"""Local checkpoint loading: original torch.hub DINOv2 / SnD state dicts <-> snd-hf `SnDModel` weights.

The key map is data (`ORIGINAL_TO_HF`), applied in both directions with strict checks: every problem
(missing, unexpected or misshaped keys) is reported at once in one `CheckpointError`.
Files are read with `torch.load(weights_only=True)` or safetensors only, so a checkpoint can never
run code. Hub resolution of the published variants lives in `snd_hf.hub`.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors

from .configuration_snd import SnDConfig
from .files import atomic_write

if TYPE_CHECKING:
    from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the expected keys and shapes."""


# Original torch.hub DINOv2 key pattern -> snd-hf key pattern. `{i}` is a block index.
ORIGINAL_TO_HF: tuple[tuple[str, str], ...] = (
    ("cls_token", "embeddings.cls_token"),
    ("mask_token", "embeddings.mask_token"),
    ("pos_embed", "embeddings.position_embeddings"),
    ("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight"),
    ("patch_embed.proj.bias", "embeddings.patch_embeddings.projection.bias"),
    ("blocks.{i}.norm1.weight", "encoder.layer.{i}.norm1.weight"),
    ("blocks.{i}.norm1.bias", "encoder.layer.{i}.norm1.bias"),
    ("blocks.{i}.attn.qkv.weight", "encoder.layer.{i}.attention.qkv.weight"),
    ("blocks.{i}.attn.qkv.bias", "encoder.layer.{i}.attention.qkv.bias"),
    ("blocks.{i}.attn.proj.weight", "encoder.layer.{i}.attention.proj.weight"),
    ("blocks.{i}.attn.proj.bias", "encoder.layer.{i}.attention.proj.bias"),
    ("blocks.{i}.ls1.gamma", "encoder.layer.{i}.layer_scale1.lambda1"),
    ("blocks.{i}.norm2.weight", "encoder.layer.{i}.norm2.weight"),
    ("blocks.{i}.norm2.bias", "encoder.layer.{i}.norm2.bias"),
    ("blocks.{i}.mlp.fc1.weight", "encoder.layer.{i}.mlp.fc1.weight"),
    ("blocks.{i}.mlp.fc1.bias", "encoder.layer.{i}.mlp.fc1.bias"),
    ("blocks.{i}.mlp.fc2.weight", "encoder.layer.{i}.mlp.fc2.weight"),
    ("blocks.{i}.mlp.fc2.bias", "encoder.layer.{i}.mlp.fc2.bias"),
    ("blocks.{i}.mlp.w12.weight", "encoder.layer.{i}.mlp.w12.weight"),
    ("blocks.{i}.mlp.w12.bias", "encoder.layer.{i}.mlp.w12.bias"),
    ("blocks.{i}.mlp.w3.weight", "encoder.layer.{i}.mlp.w3.weight"),
    ("blocks.{i}.mlp.w3.bias", "encoder.layer.{i}.mlp.w3.bias"),
    ("blocks.{i}.ls2.gamma", "encoder.layer.{i}.layer_scale2.lambda1"),
    ("norm.weight", "layernorm.weight"),
    ("norm.bias", "layernorm.bias"),
)

# Wrappers `load_original_checkpoint` unwraps: dict entries holding the state dict, and key prefixes.
WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model", "teacher")
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "backbone.")
PEFT_PREFIX = "base_model.model."


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)") + r"\Z")


_FORWARD = tuple((_compile(source), target) for source, target in ORIGINAL_TO_HF)
_BACKWARD = tuple((_compile(target), source) for source, target in ORIGINAL_TO_HF)


def _rename(state_dict: Mapping[str, torch.Tensor], rules) -> tuple[dict[str, torch.Tensor], list[str]]:
    renamed, unknown = {}, []
    for key, tensor in state_dict.items():
        for pattern, replacement in rules:
            match = pattern.match(key)
            if match:
                renamed[replacement.replace("{i}", match.groupdict().get("i") or "")] = tensor
                break
        else:
            unknown.append(key)
    return renamed, unknown


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], unknown: list[str], what: str
) -> None:
    """Raise one CheckpointError listing every missing, unexpected and misshaped key."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(unknown + [key for key in state_dict if key not in expected])
    misshaped = [
        f"{key}: expected {tuple(expected[key])}, got {tuple(tensor.shape)}"
        for key, tensor in state_dict.items()
        if key in expected and tuple(tensor.shape) != tuple(expected[key])
    ]
    problems = [
        f"{label} ({len(items)}): {', '.join(items)}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped))
        if items
    ]
    if problems:
        raise CheckpointError(f"{what} does not match the expected weights; " + "; ".join(problems))


def original_shapes(config: SnDConfig) -> dict[str, tuple[int, ...]]:
    """Every key and shape of the torch.hub DINOv2 state dict of architecture `config` (the file format).

    The format is fixed by facebookresearch/dinov2 (`DinoVisionTransformer`); `SnDModel`'s parameters
    map onto it one to one through `ORIGINAL_TO_HF` (tests/test_loading.py checks both against the
    real ViT-S/B manifests and the model).
    """
    width, grid = config.hidden_size, config.grid_size
    hidden = int(width * config.mlp_ratio)
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, width),
        "pos_embed": (1, 1 + grid * grid, width),
        "mask_token": (1, width),
        "patch_embed.proj.weight": (width, config.num_channels, config.patch_size, config.patch_size),
        "patch_embed.proj.bias": (width,),
    }
    if config.use_swiglu_ffn:  # dinov2's SwiGLUFFNFused: 2/3 of the MLP width, rounded up to a multiple of 8
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        mlp = {"w12.weight": (2 * hidden, width), "w12.bias": (2 * hidden,), "w3.weight": (width, hidden), "w3.bias": (width,)}
    else:
        mlp = {"fc1.weight": (hidden, width), "fc1.bias": (hidden,), "fc2.weight": (width, hidden), "fc2.bias": (width,)}
    for i in range(config.num_hidden_layers):
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


def _expected_shapes(config: SnDConfig) -> dict[str, tuple[int, ...]]:
    """`original_shapes` under snd-hf `SnDModel` names."""
    renamed, unknown = _rename(original_shapes(config), _FORWARD)
    assert not unknown, f"original keys without an snd-hf name: {unknown}"
    return renamed


def convert_original_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: SnDConfig | None = None
) -> dict[str, torch.Tensor]:
    """Rename an original torch.hub DINOv2 state dict to snd-hf `SnDModel` names, strictly.

    Args:
        state_dict: original keys (`cls_token`, `blocks.{i}.attn.qkv.weight`, ...).
        config: the architecture to check shapes against; inferred from the tensors when None.
    Returns:
        the same tensors under `SnDModel` names.
    Raises:
        CheckpointError: listing all missing, unexpected and misshaped keys.
    """
    config = infer_config_from_original(state_dict) if config is None else config
    renamed, unknown = _rename(state_dict, _FORWARD)
    check_state_dict(renamed, _expected_shapes(config), unknown, "original state dict")
    return renamed


def to_original_state_dict(hf_state_dict: Mapping[str, torch.Tensor], config: SnDConfig) -> dict[str, torch.Tensor]:
    """Rename snd-hf `SnDModel` weights to the original torch.hub DINOv2 layout, strictly (the inverse
    of `convert_original_state_dict`). Raises CheckpointError listing every mismatching key."""
    check_state_dict(hf_state_dict, _expected_shapes(config), [], "SnD state dict")
    renamed, unknown = _rename(hf_state_dict, _BACKWARD)
    assert not unknown, f"keys without an original name: {unknown}"
    return renamed


def infer_config_from_original(state_dict: Mapping[str, torch.Tensor], **overrides) -> SnDConfig:
    """An `SnDConfig` for an original-layout state dict, read from its tensor shapes.

    hidden size from `cls_token`, layers from the `blocks.{i}` indices, MLP ratio from `fc1` (or SwiGLU
    from `w12`), patch size from the patch projection, `image_size` from the position grid, heads =
    hidden / 64 (the DINOv2 head size) unless `num_attention_heads` is given in `overrides`.
    """
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in state_dict:
            raise CheckpointError(f"cannot infer the architecture: key {key!r} is missing (not a DINOv2 state dict?)")
    hidden_size = state_dict["cls_token"].shape[-1]
    blocks = {int(match.group(1)) for key in state_dict if (match := re.match(r"blocks\.(\d+)\.", key))}
    if not blocks:
        raise CheckpointError("cannot infer the architecture: no `blocks.{i}.*` keys")
    patch_size = state_dict["patch_embed.proj.weight"].shape[-1]
    num_positions = state_dict["pos_embed"].shape[1] - 1
    grid = int(round(num_positions**0.5))
    if grid * grid != num_positions:
        raise CheckpointError(f"pos_embed has {num_positions} patch positions, not a square grid")
    swiglu = "blocks.0.mlp.w12.weight" in state_dict
    if swiglu:
        mlp_ratio = state_dict["blocks.0.mlp.w12.weight"].shape[0] / 2 * 3 / 2 / hidden_size
    else:
        mlp_ratio = state_dict["blocks.0.mlp.fc1.weight"].shape[0] / hidden_size
    mlp_ratio = int(mlp_ratio) if float(mlp_ratio).is_integer() else mlp_ratio
    fields = {
        "hidden_size": hidden_size,
        "num_hidden_layers": max(blocks) + 1,
        "num_attention_heads": max(hidden_size // 64, 1),
        "mlp_ratio": mlp_ratio,
        "patch_size": patch_size,
        "image_size": grid * patch_size,
        "num_channels": state_dict["patch_embed.proj.weight"].shape[1],
        "qkv_bias": "blocks.0.attn.qkv.bias" in state_dict,
        "use_swiglu_ffn": swiglu,
    }
    return SnDConfig(**{**fields, **overrides})


def read_checkpoint_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> object:
    """Load a .safetensors file, or a torch file with weights_only=True; errors name the file.

    A pickle that needs more than tensors and containers is refused (`CheckpointError`) and nothing
    in it runs; a truncated or corrupt file raises `CheckpointError` too.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return load_safetensors(str(path), device=str(map_location))
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refused to load {path}: it is not a plain tensor checkpoint (weights_only=True rejected it,"
            f" nothing was executed): {str(error).splitlines()[0]}"
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, SafetensorError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or corrupt ({error})") from error


def _merge_lora(
    state_dict: dict[str, torch.Tensor], lora_alpha: float | None, lora_rank: int | None
) -> dict[str, torch.Tensor]:
    """Merge unmerged PEFT LoRA weights: W + (alpha / r) * B @ A, for each adapted `*.base_layer.weight`."""
    lora_keys = [key for key in state_dict if ".lora_A." in key]
    if not lora_keys:
        return state_dict
    if lora_alpha is None:
        raise CheckpointError(
            "the checkpoint holds unmerged LoRA weights (lora_A / lora_B) but the LoRA scaling is unknown:"
            " pass lora_alpha= (and lora_rank= if it is not the lora_A row count)"
        )
    merged = {key: tensor for key, tensor in state_dict.items() if ".lora_A." not in key and ".lora_B." not in key}
    for key_a in lora_keys:
        module, adapter = re.match(r"(.*)\.lora_A\.(?:(\w+)\.)?weight\Z", key_a).groups()
        key_b = key_a.replace(".lora_A.", ".lora_B.")
        if key_b not in state_dict:
            raise CheckpointError(f"LoRA weight {key_a} has no matching {key_b}")
        lora_a, lora_b = state_dict[key_a].float(), state_dict[key_b].float()
        rank = lora_a.shape[0] if lora_rank is None else lora_rank
        base_key = f"{module}.base_layer.weight" if f"{module}.base_layer.weight" in merged else f"{module}.weight"
        if base_key not in merged:
            raise CheckpointError(f"LoRA weight {key_a} (adapter {adapter}) has no base weight {base_key}")
        base = merged.pop(base_key)
        # Linear: B [out, r] @ A [r, in]; Conv2d: B [out, r, 1, 1] and A [r, in, k, k] contract the same way.
        delta = (lora_b.flatten(1) @ lora_a.flatten(1)).reshape(base.shape)
        merged[f"{module}.weight"] = (base.float() + (lora_alpha / rank) * delta).to(base.dtype)
    return {re.sub(r"\.base_layer\.", ".", key): tensor for key, tensor in merged.items()}


def load_original_checkpoint(
    path: str | os.PathLike, lora_alpha: float | None = None, lora_rank: int | None = None
) -> dict[str, torch.Tensor]:
    """Read an original-layout DINOv2 / SnD checkpoint into a plain state dict (original key names).

    Unwraps, explicitly: a dict holding the weights under "state_dict", "model" or "teacher"; the
    `module.` (DDP) and `backbone.` prefixes; PEFT's `base_model.model.` prefix with unmerged LoRA
    weights, merged exactly as W + (lora_alpha / r) B A (alpha must be passed: PEFT does not store it
    in the weights). Anything else is refused with a message.

    Args:
        path: a .pth/.pt (read with weights_only=True) or .safetensors file.
        lora_alpha: LoRA alpha of unmerged adapters, if any.
        lora_rank: LoRA rank r, if it differs from the adapters' row count.
    """
    path = Path(path)
    checkpoint = read_checkpoint_file(path)
    while isinstance(checkpoint, Mapping) and not any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        wrapper = next((key for key in WRAPPER_KEYS if key in checkpoint), None)
        if wrapper is None:
            raise CheckpointError(
                f"{path}: unrecognised checkpoint layout (top-level keys {sorted(checkpoint)[:10]}); expected a"
                f" state dict or a dict with one of {list(WRAPPER_KEYS)}"
            )
        checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(checkpoint).__name__}")
    not_tensors = sorted(key for key, value in checkpoint.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{path}: state dict entries that are not tensors: {not_tensors[:10]}")
    state_dict = dict(checkpoint)
    for prefix in (PEFT_PREFIX, *WRAPPER_PREFIXES):
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
    try:
        return _merge_lora(state_dict, lora_alpha, lora_rank)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None


def save_original_checkpoint(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write `model`'s weights as an original-layout state dict (.pth) that torch.hub DINOv2 loads
    with strict=True. Written to a temporary file then renamed, so no half-written output remains."""
    path = Path(path)
    state_dict = to_original_state_dict(model.state_dict(), model.config)
    state_dict = {key: tensor.detach().cpu().contiguous() for key, tensor in state_dict.items()}
    atomic_write(path, lambda temporary: torch.save(state_dict, temporary))
    return path


__all__ = [
    "CheckpointError",
    "ORIGINAL_TO_HF",
    "check_state_dict",
    "convert_original_state_dict",
    "infer_config_from_original",
    "load_original_checkpoint",
    "original_shapes",
    "read_checkpoint_file",
    "save_original_checkpoint",
    "to_original_state_dict",
]
