"""Local checkpoint loading: original torch.hub DINOv2 / SnD state dicts <-> snd-hf `SnDModel` weights.

The key map is data (`ORIGINAL_TO_HF`), applied in both directions with strict checks: every problem
(missing, unexpected or misshaped keys) is reported at once in one `CheckpointError`.
Files are read with `torch.load(weights_only=True)` or safetensors only, so a checkpoint can never
run code; zip archives are CRC-checked and every tensor must be finite. `load_original_checkpoint`
recognises the layouts people actually have (DINOv2 training checkpoints, DDP/compile/peft wrappers,
FSDP block chunks, unmerged LoRA merged exactly as peft does); anything else is a `CheckpointError`
naming what it did not understand. Native (`save_pretrained`) weights are checked against their
config from the safetensors headers alone (`check_native_weights`). Hub resolution lives in
`snd_hf.hub`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as load_safetensors

from .configuration_snd import SND_VARIANTS, SnDConfig
from .files import atomic_write, restore_interrupted, sha256_file
from .schema import read_json

if TYPE_CHECKING:
    from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the expected keys and shapes."""


# ----------------------------------------------------------------------------- the key map
# Original torch.hub DINOv2 key pattern -> snd-hf key pattern. `{i}` is a block index.
ORIGINAL_TO_HF: tuple[tuple[str, str], ...] = (
    ("cls_token", "embeddings.cls_token"),
    ("mask_token", "embeddings.mask_token"),
    ("register_tokens", "embeddings.register_tokens"),
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

# Dict entries that hold the state dict, most preferred first: DINOv2 evaluates its EMA "teacher".
WRAPPER_KEYS: tuple[str, ...] = ("teacher", "student", "model", "state_dict")
# Prefixes on every key: DDP/DataParallel, torch.compile, peft.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "base_model.model.")
# Heads DINOv2 training keeps beside `backbone.*` (dinov2/train/ssl_meta_arch.py).
HEAD_PREFIXES: tuple[str, ...] = ("dino_head.", "ibot_head.")
# Widths of the published DINOv2 ViTs (S, B, L, g), all with 64-wide heads.
PUBLISHED_WIDTHS: tuple[int, ...] = (384, 768, 1024, 1536)
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
# The SnDConfig fields that decide the weights' keys and shapes (`original_shapes`).
SHAPE_FIELDS: tuple[str, ...] = (
    "hidden_size", "num_hidden_layers", "mlp_ratio", "patch_size", "image_size", "num_channels", "qkv_bias", "use_swiglu_ffn",
    "num_register_tokens",
)
MAX_LISTED = 20  # keys named per category in an error message
EXTRA_LAYERS_LISTED = 2  # layers a native config declares beyond the weights whose keys are named one by one
_DEFAULT_LAYERS = next(field.default for field in dataclasses.fields(SnDConfig) if field.name == "num_hidden_layers")


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)") + r"\Z")


_FORWARD = tuple((_compile(source), target) for source, target in ORIGINAL_TO_HF)
_BACKWARD = tuple((_compile(target), source) for source, target in ORIGINAL_TO_HF)


def _rename(state_dict: Mapping[str, Any], rules) -> tuple[dict[str, Any], list[str]]:
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


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape if isinstance(value, torch.Tensor) else value)


def check_state_dict(
    state_dict: Mapping[str, Any],
    expected: Mapping[str, Any],
    unknown: list[str],
    what: str,
    also_missing: list[str] | None = None,
    layers: int | None = None,
) -> None:
    """Raise one CheckpointError listing every missing, unexpected and misshaped key.

    Args:
        state_dict: key -> tensor, or key -> shape (e.g. read from a safetensors header).
        expected: key -> shape.
        unknown: keys already known to be unexpected (e.g. without an snd-hf name).
        what: names the checkpoint in the message.
        also_missing: summaries of further missing keys (e.g. layers the weights lack entirely).
        layers: the config's layer count, when ``expected`` lists fewer layers than it has.

    Raises:
        CheckpointError: one line naming both architectures when the weights are another width than
            expected (the key listing would be long and say less), else the listing.
    """
    _check_architecture(state_dict, expected, what, layers)
    missing = list(also_missing or []) + sorted(set(expected) - set(state_dict))  # summaries first: never cut off
    unexpected = sorted(unknown + [key for key in state_dict if key not in expected])
    misshaped = [
        f"{key}: expected {_shape(expected[key])}, got {_shape(value)}"
        for key, value in state_dict.items()
        if key in expected and _shape(value) != _shape(expected[key])
    ]
    problems = [
        f"{label} ({len(items)}): {_listing(items)}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped))
        if items
    ]
    if problems:
        raise CheckpointError(f"{what} does not match the expected weights; " + "; ".join(problems))


_LAYER_KEY = re.compile(r"(?:encoder\.layer|blocks)\.(\d+)\.")
_WIDTH_KEYS = ("embeddings.cls_token", "cls_token")  # snd-hf and original names; [1, 1, width]
_VIT_NAMES = {"small": "ViT-S", "base": "ViT-B"}


def _architecture(shapes: Mapping[str, Any]) -> tuple[int, int] | None:
    """(width, layers) of a state dict in either naming, or None when it holds no class token."""
    width = next((_shape(shapes[key])[-1] for key in _WIDTH_KEYS if key in shapes), None)
    if width is None:
        return None
    return width, len({int(match.group(1)) for key in shapes if (match := _LAYER_KEY.match(key))})


def _check_architecture(state_dict: Mapping[str, Any], expected: Mapping[str, Any], what: str, layers: int | None) -> None:
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


def _expected_shapes(config: SnDConfig, num_layers: int | None = None) -> dict[str, tuple[int, ...]]:
    """`original_shapes` under snd-hf `SnDModel` names."""
    renamed, unknown = _rename(original_shapes(config, num_layers), _FORWARD)
    assert not unknown, f"original keys without an snd-hf name: {unknown}"
    return renamed


def _layout_hint(keys: list[str]) -> str:
    """What the keys of a refused state dict look like and what to do about it, as one sentence ("" if
    nothing is recognised): torch.compile or wrapper prefixes, peft, snd-hf native names, a timm head."""
    keys = [str(key) for key in keys]
    if any("._orig_mod." in "." + key for key in keys):
        return (
            "torch.compile's '_orig_mod.' prefix is inside the keys (a compiled submodule): save the state dict of the"
            " module before compiling, or strip '_orig_mod.'"
        )
    if any(marker in "." + key for key in keys for marker in _PEFT_MARKERS):
        return (
            "these are peft LoRA weights: load the file itself with lora_alpha= or lora_config= so they are merged,"
            " or save peft's merge_and_unload() result"
        )
    if any(key.startswith(("embeddings.", "encoder.layer.")) for key in keys):
        return "this is snd-hf's native layout: load its folder with SnDModel.from_pretrained (snd convert DIR OUT.pth writes a .pth)"
    if any(key.startswith(("head.", "fc_norm.")) for key in keys):
        return (
            "this is a timm model with a classifier head (head.*, fc_norm.*): save it built with num_classes=0"
            " (timm.create_model(name, num_classes=0)), or drop those keys"
        )
    roots = {key.split(".", 1)[0] for key in keys}
    if len(roots) == 1 and all("." in key for key in keys):
        root = roots.pop()
        inner = [key.split(".", 1)[1] for key in keys]
        if "cls_token" in inner or any(key.startswith("blocks.") for key in inner):
            return (
                f"every key starts with '{root}.', the attribute of a wrapping module (e.g. a PyTorch Lightning module's"
                f" self.{root}): save that module's own state_dict(), or strip '{root}.'"
            )
    return ""


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
    try:
        check_state_dict(renamed, _expected_shapes(config), unknown, "original state dict")
    except CheckpointError as error:
        hint = _layout_hint(unknown)
        raise CheckpointError(f"{error}; {hint}" if hint else str(error)) from None
    return renamed


def to_original_state_dict(hf_state_dict: Mapping[str, torch.Tensor], config: SnDConfig) -> dict[str, torch.Tensor]:
    """Rename snd-hf `SnDModel` weights to the original torch.hub DINOv2 layout, strictly (the inverse
    of `convert_original_state_dict`). Raises CheckpointError listing every mismatching key."""
    check_state_dict(hf_state_dict, _expected_shapes(config), [], "SnD state dict")
    renamed, unknown = _rename(hf_state_dict, _BACKWARD)
    assert not unknown, f"keys without an original name: {unknown}"
    return renamed


# ----------------------------------------------------------------------------- architecture
def _require(state_dict: Mapping[str, torch.Tensor], key: str, source: str | None) -> torch.Tensor:
    """state_dict[key], or a CheckpointError naming the keys that are not DINOv2 ViT keys."""
    if key in state_dict:
        return state_dict[key]
    _, unknown = _rename(state_dict, _FORWARD)
    hint = _layout_hint(unknown)
    raise CheckpointError(
        f"{source or 'state dict'}: cannot infer the architecture: key {key!r} is missing (not a DINOv2 ViT state"
        f" dict?); keys it does not understand ({len(unknown)}): {_listing(sorted(unknown)) or 'none'}"
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


# ----------------------------------------------------------------------------- sidecar
SIDECAR_FORMAT = "snd-hf original-layout sidecar"
# What a sidecar records: every SnDConfig field (the architecture the shapes cannot tell, the variant,
# the training record), except the backbone output options, which are chosen when loading.
_SIDECAR_SKIP = ("_out_features", "_out_indices", "apply_layernorm", "reshape_hidden_states")


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON file beside an original-layout checkpoint that records what its tensors cannot tell
    (`model.pth` -> `model.pth.json`)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _config_fields() -> list[str]:
    own = set(vars(SnDConfig).get("__annotations__", {}))
    return [field.name for field in dataclasses.fields(SnDConfig) if field.name in own and field.name not in _SIDECAR_SKIP]


def write_sidecar(path: str | os.PathLike, config: SnDConfig) -> Path:
    """Write `sidecar_path(path)` for the finished checkpoint `path`: its SHA-256 and `config`'s fields."""
    path = Path(path)
    record = {
        "format": SIDECAR_FORMAT,
        "checkpoint": path.name,
        "sha256": sha256_file(path),
        "config": {name: getattr(config, name) for name in _config_fields()},
    }
    sidecar = sidecar_path(path)
    atomic_write(sidecar, lambda temporary: Path(temporary).write_text(json.dumps(record, indent=2, default=str)))
    return sidecar


def read_sidecar(path: str | os.PathLike) -> dict[str, Any] | None:
    """The config fields recorded beside checkpoint `path`, or None when it has no sidecar.

    Raises:
        CheckpointError: the sidecar is unreadable, or belongs to another file (its SHA-256 differs:
            the .pth was replaced after the sidecar was written).
    """
    path, sidecar = Path(path), sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        record = read_json(sidecar)
        if record.get("format") != SIDECAR_FORMAT or not isinstance(record.get("config"), dict):
            raise ValueError("not an snd-hf sidecar")
    except (ValueError, OSError) as error:
        raise CheckpointError(f"cannot read {sidecar} ({error}): delete it, or write it again with snd convert") from None
    if record.get("sha256") != sha256_file(path):
        raise CheckpointError(
            f"{sidecar} describes another file than {path} (SHA-256 differs: the checkpoint was replaced after its"
            " sidecar was written); delete the sidecar and pass the architecture (e.g. --num-heads) instead"
        )
    return record["config"]


def original_checkpoint_config(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    defaults: Mapping[str, Any] | None = None,
    **overrides,
) -> SnDConfig:
    """The `SnDConfig` of the original-layout checkpoint `path` (already read into `state_dict`).

    Read from its sidecar (`read_sidecar`) when there is one, checked against the tensor shapes;
    otherwise inferred from the shapes (`infer_config_from_original`) with `defaults` (the layout's
    `OriginalCheckpoint.config_defaults`) for what shapes cannot tell. `overrides` (config fields) win
    over both; one that contradicts the sidecar is refused.

    Raises:
        CheckpointError: the sidecar disagrees with the tensors or with `overrides`.
    """
    recorded = read_sidecar(path)
    if recorded is None:
        return infer_config_from_original(state_dict, source=str(path), **{**(defaults or {}), **overrides})
    conflicts = [
        f"{name}={value!r} (sidecar: {recorded[name]!r})"
        for name, value in overrides.items()
        if value is not None and recorded.get(name) is not None and recorded[name] != value
    ]
    if conflicts:
        raise CheckpointError(
            f"{path}: {', '.join(conflicts)} contradict its sidecar {sidecar_path(path).name}; drop them, or delete"
            " the sidecar if it is wrong"
        )
    try:
        config = SnDConfig(**{**recorded, **{name: value for name, value in overrides.items() if value is not None}})
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{sidecar_path(path)} holds an invalid config ({error}): delete it, or write it again") from None
    # Compared as shapes, not fields: e.g. a SwiGLU width is reached from several mlp_ratio values.
    disagreeing = [
        key for key, shape in original_shapes(config).items() if key not in state_dict or tuple(state_dict[key].shape) != shape
    ]
    if disagreeing:
        raise CheckpointError(
            f"{sidecar_path(path)} does not describe the tensors of {path} (it implies other or absent"
            f" {_listing(disagreeing)}); delete the sidecar and pass the architecture instead"
        )
    return config


# ----------------------------------------------------------------------------- reading files
def _checkpoint_kind(path: Path) -> str:
    """"zip" (torch.save), "pickle" (legacy torch.save) or "safetensors", from the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000:
        return "safetensors"
    raise CheckpointError(
        f"{path} is not a PyTorch (.pth/.pt) or safetensors checkpoint (it starts with {head[:8]!r}); give the"
        " weights file itself"
    )


def _named_tensors(value: object, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _named_tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _named_tensors(item, f"{prefix}.{index}" if prefix else str(index))


_STORAGE_ENTRY = re.compile(r"/data/\d+\Z")  # where torch.save puts each storage's bytes
_verified: set[tuple] = set()  # archives whose CRCs passed in this process: (path, inode, size, mtime)


def _storage_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of `tensor`'s whole storage (without a copy when it is in CPU memory)."""
    storage = tensor.untyped_storage()
    return memoryview(torch.empty(0, dtype=torch.uint8).set_(storage.cpu() if storage.device.type != "cpu" else storage).numpy())


def _verify_archive(path: Path, loaded: object) -> None:
    """Check the CRC-32 of every entry of a torch zip archive, which torch.load does not.

    Storage entries are checked against the storages just loaded (a storage's bytes match the CRC its
    entry records unless either was corrupted), so the file is not read a second time and the bad
    entry is named with the tensors it holds; the small entries (pickle, version) are read by zipfile,
    which checks them. Done once per file version per process.
    """
    status = path.stat()
    version = (str(path.resolve()), status.st_ino, status.st_size, status.st_mtime_ns)
    if version in _verified:
        return
    storages: dict[int, tuple[int, list[str]]] = {}
    for name, tensor in _named_tensors(loaded):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in storages:
            storages[pointer] = (zlib.crc32(_storage_bytes(tensor)), [])
        storages[pointer][1].append(name)
    loaded_crcs = {crc for crc, _ in storages.values()}
    try:
        with zipfile.ZipFile(path) as archive:
            recorded = {info.filename: info.CRC for info in archive.infolist() if _STORAGE_ENTRY.search(info.filename)}
            for info in archive.infolist():
                # small entries, and any storage no loaded tensor matches: zipfile's read checks the CRC
                if info.filename not in recorded or info.CRC not in loaded_crcs:
                    archive.read(info.filename)
    except zipfile.BadZipFile as error:
        entry = re.search(r"'([^']*)'", str(error))
        holding = [names for crc, names in storages.values() if crc not in set(recorded.values())]
        detail = f"archive entry {entry.group(1)!r}" if entry else str(error)
        if holding:
            detail += f" (holding {', '.join(name for names in holding for name in names)})"
        raise CheckpointError(
            f"{path} is corrupt: {detail} fails its CRC-32 check; download or copy the file again"
        ) from None
    _verified.add(version)


def read_checkpoint_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> object:
    """Load a .safetensors file, or a torch file with weights_only=True; errors name the file.

    The format is read from the file's first bytes, not its suffix. A pickle that needs more than
    tensors and containers is refused (`CheckpointError`) and nothing in it runs; a file that is not a
    checkpoint, a truncated file and a torch zip archive with a bad CRC-32 (named by entry and tensor)
    raise `CheckpointError` too. A file that a crash left moved aside to `.<name>.old` is restored first
    (`snd_hf.files.restore_interrupted`).
    """
    path = Path(path)
    restore_interrupted(path)
    if not path.is_file():
        hint = " (it is a folder: load it with SnDModel.from_pretrained)" if path.is_dir() else ""
        raise FileNotFoundError(f"checkpoint not found: {path}{hint}")
    kind = _checkpoint_kind(path)
    try:
        if kind == "safetensors":
            return load_safetensors(str(path), device=str(map_location))
        loaded = torch.load(path, map_location=map_location, weights_only=True)
        if kind == "zip":
            _verify_archive(path, loaded)
        return loaded
    except CheckpointError:
        raise
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refused to load {path}: it is not a plain tensor checkpoint (weights_only=True rejected it,"
            f" nothing was executed): {str(error).splitlines()[0]}"
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, SafetensorError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or corrupt ({error!r})") from error


def check_finite(state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise a CheckpointError naming the first tensor (in order) holding NaN or inf.

    A single NaN weight does not always surface as NaN features (CPU SDPA can return finite, wrong
    values), so it is refused at load time.
    """
    for key, tensor in state_dict.items():
        if tensor.is_meta or tensor.numel() == 0 or not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        # min and max propagate NaN and reach any inf: two reductions, no temporary the size of the
        # tensor (isfinite(tensor).all() is ~10x slower on a ViT-B).
        extremes = torch.view_as_real(tensor) if tensor.is_complex() else tensor
        if not bool(torch.isfinite(torch.stack(torch.aminmax(extremes))).all()):
            count = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{what}: {key} holds {count} non-finite value(s) (NaN/inf) of {tensor.numel()}; the weights are"
                " corrupt or come from a diverged run: use another checkpoint"
            )


# ----------------------------------------------------------------------------- layouts
_CHUNKED_BLOCK = re.compile(r"blocks\.(\d+)\.(\d+)\.(.+)\Z")


def _unwrap(checkpoint: object, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict inside a checkpoint's wrapper dicts, and notes on what was left out."""
    notes = []
    while isinstance(checkpoint, Mapping) and not any(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        present = [key for key in WRAPPER_KEYS if isinstance(checkpoint.get(key), Mapping)]
        if not present:
            raise CheckpointError(
                f"{path}: unrecognised checkpoint layout (top-level keys {sorted(map(str, checkpoint))[:MAX_LISTED]});"
                f" expected a state dict or a dict with one of {list(WRAPPER_KEYS)}"
            )
        if len(present) > 1:
            notes.append(f"used {present[0]!r} and ignored {present[1:]}")
        checkpoint = checkpoint[present[0]]
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(checkpoint).__name__}")
    _refuse_mef(checkpoint, path)
    not_tensors = sorted(str(key) for key, value in checkpoint.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{path}: state dict entries that are not tensors: {not_tensors[:10]}")
    return dict(checkpoint), notes


def _select_backbone(state_dict: dict[str, torch.Tensor], path: Path, notes: list[str]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes and pick the ViT out of a whole training model, until nothing changes:
    `module.` / `_orig_mod.` / `base_model.model.` on every key; DINOv2's `teacher.*` + `student.*`
    (the teacher is kept); `backbone.*` beside DINO/iBOT heads (the heads are left out, with a note)."""
    if any("flat_param" in key for key in state_dict):
        raise CheckpointError(
            f"{path} is one rank's shard of an FSDP checkpoint (flat parameters), not a state dict; use the"
            " consolidated teacher DINOv2 writes to eval/<iteration>/teacher_checkpoint.pth"
        )
    while True:
        prefix = next((p for p in WRAPPER_PREFIXES if state_dict and all(key.startswith(p) for key in state_dict)), None)
        if prefix is not None:
            state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
            continue
        roots = {key.split(".", 1)[0] for key in state_dict}
        if state_dict and roots <= {"teacher", "student"}:
            chosen = "teacher" if "teacher" in roots else "student"
            if len(roots) == 2:
                notes.append("used the teacher.* weights and ignored student.*")
            state_dict = {key[len(chosen) + 1 :]: value for key, value in state_dict.items() if key.startswith(chosen + ".")}
            continue
        if any(key.startswith("backbone.") for key in state_dict):
            others = [key for key in state_dict if not key.startswith("backbone.")]
            unknown = [key for key in others if not key.startswith(HEAD_PREFIXES)]
            if unknown:
                raise CheckpointError(
                    f"{path}: keys beside the backbone.* weights that are neither backbone nor DINOv2 heads"
                    f" ({len(unknown)}): {_listing(unknown)}"
                )
            if others:
                heads = sorted({key.split(".", 1)[0] + ".*" for key in others})
                notes.append(f"loaded the backbone and ignored the head weights beside it ({', '.join(heads)}: {len(others)} tensors)")
            state_dict = {key[len("backbone.") :]: value for key, value in state_dict.items() if key.startswith("backbone.")}
            continue
        return state_dict


def _flatten_block_chunks(state_dict: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """`blocks.{chunk}.{i}.*` (DINOv2's `block_chunks` for FSDP, dinov2/models/vision_transformer.py:
    chunk c holds blocks i with their global index) -> `blocks.{i}.*`, numbered in (chunk, i) order."""
    chunked = {key: match for key in state_dict if (match := _CHUNKED_BLOCK.match(key))}
    if not chunked:
        return state_dict
    plain = [key for key in state_dict if key.startswith("blocks.") and key not in chunked]
    if plain:
        raise CheckpointError(f"{path}: mixes chunked blocks.{{chunk}}.{{i}} keys with plain block keys: {_listing(plain)}")
    order = sorted({(int(match[1]), int(match[2])) for match in chunked.values()})
    index = {pair: position for position, pair in enumerate(order)}
    return {
        (f"blocks.{index[(int(chunked[key][1]), int(chunked[key][2]))]}.{chunked[key][3]}" if key in chunked else key): value
        for key, value in state_dict.items()
    }


# The resize numerics each layout's own forward uses, as SnDConfig fields (defaults that a sidecar or
# the caller's config fields override): torch.hub's plain ViTs resize by scale factor with offset 0.1
# (the SnDConfig default); its register ViTs (dinov2 hub/backbones.py), transformers'
# Dinov2WithRegistersModel and timm with dynamic_img_size resize to the exact size with antialiasing;
# transformers' Dinov2Model to the exact size without.
EXACT_ANTIALIASED_RESIZE: dict[str, Any] = {"interpolate_offset": 0.0, "interpolate_antialias": True}
LAYOUT_CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "torch.hub": {},
    "torch.hub registers": EXACT_ANTIALIASED_RESIZE,
    "timm": EXACT_ANTIALIASED_RESIZE,
    "timm registers": EXACT_ANTIALIASED_RESIZE,
    "transformers": {"interpolate_offset": 0.0, "interpolate_antialias": False},
    "transformers registers": EXACT_ANTIALIASED_RESIZE,
}
# transformers' Dinov2Model / Dinov2WithRegistersModel names (v5, and the v4 names of the Hub's
# facebook/dinov2-* files) -> torch.hub names; then the pieces torch.hub keeps fused, in its order.
_TRANSFORMERS_RENAMES: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(pattern + r"\Z"), replacement)
    for pattern, replacement in (
        (r"embeddings\.cls_token", "cls_token"),
        (r"embeddings\.mask_token", "mask_token"),
        (r"embeddings\.position_embeddings", "pos_embed"),
        (r"embeddings\.register_tokens", "register_tokens"),
        (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
        (r"encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
        (r"encoder\.layer\.(\d+)\.attention\.(?:o_proj|output\.dense)\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
        (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
        (r"encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
        (r"encoder\.layer\.(\d+)\.mlp\.weights_in\.(weight|bias)", r"blocks.\1.mlp.w12.\2"),
        (r"encoder\.layer\.(\d+)\.mlp\.(?:weights_out|down_proj)\.(weight|bias)", r"blocks.\1.mlp.w3.\2"),
        (r"layernorm\.(weight|bias)", r"norm.\1"),
    )
)
_TRANSFORMERS_FUSED: tuple[tuple[re.Pattern, str, tuple[str, ...]], ...] = (
    (
        re.compile(r"encoder\.layer\.(\d+)\.attention\.(?:(q|k|v)_proj|attention\.(query|key|value))\.(weight|bias)\Z"),
        "blocks.{}.attn.qkv.{}",
        ("q", "k", "v"),
    ),
    (re.compile(r"encoder\.layer\.(\d+)\.mlp\.(gate|up)_proj\.(weight|bias)\Z"), "blocks.{}.mlp.w12.{}", ("gate", "up")),
)
_MEF_KEY = re.compile(r"w_[ab]_\d{3}\Z")


def _refuse_mef(checkpoint: Mapping, path: Path) -> None:
    """Refuse MEF's Lightning checkpoint (its LoRA and refine_conv are not a ViT state dict), saying what to do."""
    if any(_MEF_KEY.match(str(key)) for key in checkpoint):
        raise CheckpointError(
            f"{path} is a MEF checkpoint (PyTorch Lightning .ckpt: LoRA w_a_*/w_b_* and refine_conv, without the"
            " DINOv2 weights): load it with snd_hf.baselines.load_baseline(path, base=DINOV2_WEIGHTS), or"
            f" snd eval --model mef={path}@DINOV2_WEIGHTS"
        )


def _from_transformers_layout(state_dict: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], str] | None:
    """A transformers `Dinov2Model` / `Dinov2WithRegistersModel` state dict (separate q, k, v) in the
    torch.hub layout (q, k, v concatenated into `qkv` in that order; SwiGLU's gate and up into `w12`),
    and its layout; None when the keys are not transformers' DINOv2. Keys it does not know are kept, for
    the strict check to name."""
    if "embeddings.cls_token" not in state_dict or not any(pattern.match(key) for key in state_dict for pattern, _, _ in _TRANSFORMERS_FUSED[:1]):
        return None
    converted: dict[str, torch.Tensor] = {}
    pieces: dict[str, dict[str, torch.Tensor]] = {}
    orders: dict[str, tuple[str, ...]] = {}
    for key, tensor in state_dict.items():
        for pattern, target, order in _TRANSFORMERS_FUSED:
            if match := pattern.match(key):
                block, *names, param = (group for group in match.groups() if group is not None)
                name = {"query": "q", "key": "k", "value": "v"}.get(names[0], names[0])
                fused = target.format(block, param)
                pieces.setdefault(fused, {})[name] = tensor
                orders[fused] = order
                break
        else:
            for pattern, replacement in _TRANSFORMERS_RENAMES:
                if pattern.match(key):
                    converted[pattern.sub(replacement, key)] = tensor
                    break
            else:
                converted[key] = tensor
    for fused, parts in pieces.items():
        missing = [name for name in orders[fused] if name not in parts]
        if missing:
            raise CheckpointError(f"{path}: transformers' DINOv2 layout lacks the {missing} part(s) of {fused}")
        converted[fused] = torch.cat([parts[name] for name in orders[fused]])
    registers = "register_tokens" in converted
    if registers and converted["register_tokens"].shape[1] == 0:  # Dinov2WithRegisters with none
        del converted["register_tokens"]
    return converted, "transformers registers" if registers else "transformers"


def _from_timm_layout(state_dict: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A timm `vit_*_patch14_dinov2` / `vit_*_patch14_reg4_dinov2` state dict (FiT3D's checkpoints) in the
    torch.hub layout, and the layout it was in.

    timm's keys are torch.hub's except two things. timm keeps no `mask_token`: it is filled with zeros,
    which changes no feature, since inference never masks patches (only DINOv2's iBOT pre-training
    does); nothing else is ever filled. timm's register models keep `reg_token` [1, R, C] and a
    class-free `pos_embed` [1, h*w, C], adding no position to CLS: here `register_tokens` and a zero
    class slot in front of `pos_embed`, which adds the same nothing."""
    registers = "reg_token" in state_dict
    if registers and "register_tokens" in state_dict:
        raise CheckpointError(
            f"{path}: holds both timm's reg_token and torch.hub's register_tokens; give one model's state dict"
        )
    hub_registers = "register_tokens" in state_dict
    if "mask_token" in state_dict or "cls_token" not in state_dict:
        return state_dict, "torch.hub registers" if hub_registers else "torch.hub"
    # Deviation (docs/deviations.md, 40): timm's layout converted, not run in timm.
    state_dict = dict(state_dict)
    cls_token = state_dict["cls_token"]
    state_dict["mask_token"] = cls_token.new_zeros(1, cls_token.shape[-1])
    if registers:
        state_dict["register_tokens"] = state_dict.pop("reg_token")
        if "pos_embed" in state_dict:
            pos_embed = state_dict["pos_embed"]
            state_dict["pos_embed"] = torch.cat((pos_embed.new_zeros(1, 1, pos_embed.shape[-1]), pos_embed), dim=1)
    return state_dict, "timm registers" if registers else "timm"


# ----------------------------------------------------------------------------- LoRA
_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<matrix>[AB])\.(?P<adapter>[^.]+)\.(?P<param>weight|bias)\Z")
_SAVED_MODULE = re.compile(r"(?P<module>.+)\.modules_to_save\.(?P<adapter>[^.]+)\.(?P<param>.+)\Z")
_ORIGINAL_MODULE = re.compile(r"(?P<module>.+)\.original_module\.(?P<param>.+)\Z")
# peft weights this loader does not merge, and what they are.
_PEFT_UNSUPPORTED = {
    "lora_magnitude_vector": "DoRA (use_dora=True)",
    "lora_embedding_A": "LoRA on an embedding",
    "lora_embedding_B": "LoRA on an embedding",
    "lora_E": "AdaLoRA",
    "ranknum": "AdaLoRA",
    "trainable_tokens": "trainable tokens",
}
_PEFT_MARKERS = (".lora_", ".base_layer.", ".modules_to_save.", ".original_module.", *(f".{name}" for name in _PEFT_UNSUPPORTED))


def _single_lora_config(value: object) -> dict[str, Any]:
    """A peft LoraConfig, its dict or an adapter_config.json (file or folder) as a plain dict."""
    if isinstance(value, (str, os.PathLike)):
        file = Path(value) / "adapter_config.json" if Path(value).is_dir() else Path(value)
        try:
            return read_json(file)
        except (OSError, ValueError) as error:
            raise CheckpointError(f"cannot read the LoRA config {file} ({error}): give peft's adapter_config.json") from None
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"lora_config must be a peft LoraConfig, a dict or a path to adapter_config.json, got {type(value).__name__}")


def _lora_settings(
    adapters: list[str], lora_alpha: float | None, use_rslora: bool, lora_config: object
) -> dict[str, dict[str, Any]]:
    """Adapter -> peft settings (lora_alpha, use_rslora, r, rank_pattern, alpha_pattern), in merge order."""
    if lora_alpha is not None and lora_config is not None:
        raise ValueError("pass lora_alpha= or lora_config=, not both")
    if lora_config is None and lora_alpha is None:
        raise CheckpointError(
            f"the checkpoint holds unmerged LoRA weights (lora_A / lora_B, adapters {adapters}) but the LoRA scaling"
            " is unknown: pass lora_alpha= (and use_rslora=True if it was trained so), or lora_config= (peft's"
            " adapter_config.json or LoraConfig)"
        )
    if lora_config is None:
        configs = {"": {"lora_alpha": lora_alpha, "use_rslora": use_rslora}}
    elif isinstance(lora_config, Mapping) and lora_config and "lora_alpha" not in lora_config:
        configs = {str(name): _single_lora_config(value) for name, value in lora_config.items()}
    else:
        configs = {"": _single_lora_config(lora_config)}
    if "" in configs:  # one config: it must be unambiguous which adapter it describes
        if len(adapters) != 1:
            raise CheckpointError(
                f"the checkpoint holds {len(adapters)} LoRA adapters {adapters}: pass lora_config={{adapter: config}}"
                " for the ones to merge, in merge order (peft merges its active adapters)"
            )
        configs = {adapters[0]: configs[""]}
    absent = [name for name in configs if name not in adapters]
    if absent:
        raise CheckpointError(f"LoRA adapters {absent} are not in the checkpoint, which holds {adapters}")
    for name, config in configs.items():
        if config.get("peft_type", "LORA") != "LORA":
            raise CheckpointError(f"adapter {name!r} is a {config['peft_type']} adapter: only LoRA is merged here")
        if config.get("use_dora"):
            raise CheckpointError(f"adapter {name!r} uses DoRA (use_dora=True), which this loader does not merge")
        if config.get("lora_alpha") is None:
            raise CheckpointError(f"the LoRA config of adapter {name!r} has no lora_alpha")
    return configs


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """peft's per-module rank_pattern / alpha_pattern lookup, by peft's own matching rule."""
    if not patterns:
        return default
    from peft.utils.other import get_pattern_key

    return patterns.get(get_pattern_key(list(patterns), module), default)


def _lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, weight: torch.Tensor) -> torch.Tensor:
    """The weight update of one adapter, computed as peft's `get_delta_weight` does (peft/tuners/lora/
    layer.py: Linear and Conv2d), so that the merged weights are bit-identical to `merge_and_unload()`:
    B @ A (Linear, or a 1x1 Conv2d) or conv2d(A^T, B)^T (a k x k Conv2d) times the scaling; half
    precision is computed in float32 (peft does so on CPU) and cast back."""
    dtype = lora_a.dtype if weight.ndim == 4 else lora_b.dtype  # peft's Conv / Linear choice
    half = dtype in (torch.float16, torch.bfloat16)
    if half:
        lora_a, lora_b = lora_a.float(), lora_b.float()
    if weight.ndim == 2 and lora_a.ndim == 2:
        delta = (lora_b @ lora_a) * scaling
    elif weight.ndim == 4 and lora_a.ndim == 4 and tuple(weight.shape[2:4]) == (1, 1):
        delta = (lora_b.squeeze(3).squeeze(2) @ lora_a.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3) * scaling
    elif weight.ndim == 4 and lora_a.ndim == 4:
        delta = F.conv2d(lora_a.transpose(0, 1), lora_b).transpose(0, 1) * scaling
    else:
        raise CheckpointError(f"LoRA on a {weight.ndim - 2}-d kernel ({tuple(weight.shape)}) is not supported; only Linear and Conv2d")
    return delta.to(dtype) if half else delta


def _merge_lora(
    state_dict: dict[str, torch.Tensor], lora_alpha: float | None, use_rslora: bool, lora_config: object
) -> dict[str, torch.Tensor]:
    """Merge unmerged peft LoRA weights exactly as peft's `merge_and_unload()` (module docstring of
    `load_original_checkpoint`); refuse, naming them, the peft weights it cannot merge."""
    peft_keys = [key for key in state_dict if any(marker in "." + key for marker in _PEFT_MARKERS)]
    if not peft_keys:
        return state_dict
    unsupported = sorted({feature for key in peft_keys for name, feature in _PEFT_UNSUPPORTED.items() if f".{name}" in "." + key})
    if unsupported:
        found = [key for key in peft_keys if any(f".{name}" in "." + key for name in _PEFT_UNSUPPORTED)]
        raise CheckpointError(
            f"peft weights this loader cannot merge ({', '.join(unsupported)}): {_listing(found)}; merge them with"
            " peft's merge_and_unload() and save the merged model"
        )
    lora: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    saved: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    merged, leftovers = {}, []
    for key, tensor in state_dict.items():
        if match := _LORA_KEY.match(key):
            lora.setdefault(match["module"], {}).setdefault(match["adapter"], {})[f"{match['matrix']}.{match['param']}"] = tensor
        elif match := _SAVED_MODULE.match(key):
            saved.setdefault(match["module"], {}).setdefault(match["adapter"], {})[match["param"]] = tensor
        elif ".lora_" in "." + key:
            leftovers.append(key)
        else:
            merged[key] = tensor
    if leftovers:
        raise CheckpointError(f"peft LoRA weights of an unknown kind: {_listing(leftovers)}")
    adapters = sorted({adapter for per_module in (*lora.values(), *saved.values()) for adapter in per_module})
    settings = _lora_settings(adapters, lora_alpha, use_rslora, lora_config)
    ignored = [adapter for adapter in adapters if adapter not in settings]
    if ignored:
        warnings.warn(f"LoRA adapters {ignored} are not merged (only {list(settings)} are) and are dropped", stacklevel=3)

    for module, per_adapter in lora.items():
        weight_key = f"{module}.base_layer.weight" if f"{module}.base_layer.weight" in merged else f"{module}.weight"
        bias_key = weight_key[: -len("weight")] + "bias"
        if weight_key not in merged:
            raise CheckpointError(f"LoRA weights of {module} have no base weight {weight_key}")
        weight = merged[weight_key].clone()
        bias = merged[bias_key].clone() if bias_key in merged else None
        for adapter, config in settings.items():
            if adapter not in per_adapter:
                continue
            tensors = per_adapter[adapter]
            if "A.weight" not in tensors or "B.weight" not in tensors:
                raise CheckpointError(f"LoRA adapter {adapter!r} of {module} lacks lora_A or lora_B")
            rank = tensors["A.weight"].shape[0]
            expected_rank = _pattern_value(config.get("rank_pattern") or {}, module, config.get("r", rank))
            if expected_rank != rank:
                raise CheckpointError(
                    f"LoRA adapter {adapter!r} of {module} has rank {rank}, its config says r={expected_rank}: the config"
                    " does not belong to these weights"
                )
            alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
            scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
            delta = _lora_delta(tensors["A.weight"], tensors["B.weight"], scaling, weight)
            if delta.shape != weight.shape:
                raise CheckpointError(
                    f"LoRA adapter {adapter!r} of {module} gives an update of shape {tuple(delta.shape)} for a weight of"
                    f" shape {tuple(weight.shape)}"
                )
            weight += delta  # in place in the base dtype, as peft's merge does
            if "B.bias" in tensors:  # peft's lora_bias=True
                if bias is None:
                    raise CheckpointError(f"LoRA adapter {adapter!r} of {module} has a lora_B bias but the layer has no bias")
                bias += tensors["B.bias"] * scaling
        merged[weight_key] = weight
        if bias is not None:
            merged[bias_key] = bias

    for module, per_adapter in saved.items():  # peft's modules_to_save: the adapter's copy replaces the original
        chosen = [adapter for adapter in settings if adapter in per_adapter]
        if len(chosen) > 1:
            raise CheckpointError(f"several merged adapters {chosen} save their own copy of {module}: merge one at a time")
        originals = [key for key in merged if (match := _ORIGINAL_MODULE.match(key)) and match["module"] == module]
        if chosen:
            for key in originals:
                del merged[key]
            merged.update({f"{module}.{param}": tensor for param, tensor in per_adapter[chosen[0]].items()})
    return {re.sub(r"\.(?:base_layer|original_module)\.", ".", key): tensor for key, tensor in merged.items()}


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
    state_dict, notes = _unwrap(read_checkpoint_file(path), path)
    state_dict = _select_backbone(state_dict, path, notes)
    state_dict = _flatten_block_chunks(state_dict, path)
    check_finite(state_dict, str(path))
    try:
        merged = _merge_lora(state_dict, lora_alpha, use_rslora, lora_config)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    if merged is not state_dict:
        check_finite(merged, f"{path} (after merging LoRA)")
    if notes:
        warnings.warn(f"{path}: " + "; ".join(notes), stacklevel=2)
    return OriginalCheckpoint(*(_from_transformers_layout(merged, path) or _from_timm_layout(merged, path)))


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


# ----------------------------------------------------------------------------- native checkpoints
def read_native_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor in a native checkpoint's weight files, from the safetensors headers
    alone (nothing is loaded; a `pytorch_model.bin` is read with `read_checkpoint_file`).

    Raises:
        CheckpointError: a file that is not valid safetensors, naming it.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        if file.suffix != ".safetensors":
            shapes.update({key: tuple(value.shape) for key, value in _named_tensors(read_checkpoint_file(file))})
            continue
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"cannot read {file}: not a valid safetensors file ({error}); download or write it again") from error
    return shapes


def check_native_weights(shapes: Mapping[str, tuple[int, ...]], config: SnDConfig | Mapping[str, Any], what: str) -> None:
    """Raise a CheckpointError unless `shapes` (`read_native_shapes`) are exactly the weights of
    `SnDModel(config)`, naming every missing, unexpected and misshaped key.

    Args:
        config: an `SnDConfig`, or a config.json's values: only `SHAPE_FIELDS` are read, and no config
            of the claimed size is ever built.
    Keys are listed for the layers the weights hold and up to `EXTRA_LAYERS_LISTED` more; a config
    claiming far more (e.g. 100000 layers) fails at once with the range it lacks, before anything is
    built or allocated.
    """
    if isinstance(config, SnDConfig):
        fields = {name: getattr(config, name) for name in SHAPE_FIELDS}
    else:
        fields = {name: config[name] for name in SHAPE_FIELDS if name in config}
    declared = fields.get("num_hidden_layers", _DEFAULT_LAYERS)
    if not isinstance(declared, int) or declared < 0:
        raise CheckpointError(f"{what}: num_hidden_layers must be a whole number, the config says {declared!r}")
    present = {int(match.group(1)) for key in shapes if (match := re.match(r"encoder\.layer\.(\d+)\.", key))}
    listed = min(declared, max(present, default=-1) + 1 + EXTRA_LAYERS_LISTED)
    try:  # heads do not change any shape
        listing = SnDConfig(**{**fields, "num_hidden_layers": listed, "num_attention_heads": 1})
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{what}: its config is not a valid SnD config ({error})") from None
    lacking = declared - listed
    summary = (
        [f"encoder.layer.{listed}.* to encoder.layer.{declared - 1}.* ({lacking} layers in the config, none in the weights)"]
        if lacking
        else []
    )
    check_state_dict(shapes, _expected_shapes(listing), [], what, also_missing=summary, layers=declared)


_NOT_ARCHITECTURE = ("_name_or_path", "transformers_version", "training_info", "architectures", "dtype")


def weights_hash(model: nn.Module) -> str:
    """SHA-256 of the architecture (config) and every weight: equal hashes mean equal features."""
    # Fields that name or annotate the checkpoint without changing its features stay out.
    architecture = {key: value for key, value in model.config.to_dict().items() if key not in _NOT_ARCHITECTURE}
    digest = hashlib.sha256(json.dumps(architecture, sort_keys=True, default=str).encode())
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


__all__ = [
    "CHECKPOINT_SUFFIXES",
    "SHAPE_FIELDS",
    "CheckpointError",
    "LAYOUT_CONFIG_DEFAULTS",
    "ORIGINAL_TO_HF",
    "OriginalCheckpoint",
    "check_finite",
    "check_native_weights",
    "check_state_dict",
    "convert_original_state_dict",
    "infer_config_from_original",
    "load_original_checkpoint",
    "original_checkpoint_config",
    "original_shapes",
    "read_checkpoint_file",
    "read_native_shapes",
    "read_original_checkpoint",
    "read_sidecar",
    "save_original_checkpoint",
    "sidecar_path",
    "to_original_state_dict",
    "weights_hash",
    "write_sidecar",
]
