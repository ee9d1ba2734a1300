"""The layouts people's checkpoints come in, brought to the torch.hub DINOv2 naming: wrapper dicts and
prefixes, whole DINOv2 training models, FSDP block chunks, transformers' and timm's DINOv2 (FiT3D),
MEF's refused Lightning checkpoint; and a hint naming the layout of keys nothing recognised."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import MAX_LISTED, CheckpointError, listing
from .lora import PEFT_MARKERS

# Dict entries that hold the state dict, most preferred first: DINOv2 evaluates its EMA "teacher".
WRAPPER_KEYS: tuple[str, ...] = ("teacher", "student", "model", "state_dict")
# Prefixes on every key: DDP/DataParallel, torch.compile, peft.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "base_model.model.")
# Heads DINOv2 training keeps beside `backbone.*` (dinov2/train/ssl_meta_arch.py).
HEAD_PREFIXES: tuple[str, ...] = ("dino_head.", "ibot_head.")
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
_CHUNKED_BLOCK = re.compile(r"blocks\.(\d+)\.(\d+)\.(.+)\Z")
_MEF_KEY = re.compile(r"w_[ab]_\d{3}\Z")


def unwrap(checkpoint: object, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
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


def select_backbone(state_dict: dict[str, torch.Tensor], path: Path, notes: list[str]) -> dict[str, torch.Tensor]:
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
                    f" ({len(unknown)}): {listing(unknown)}"
                )
            if others:
                heads = sorted({key.split(".", 1)[0] + ".*" for key in others})
                notes.append(f"loaded the backbone and ignored the head weights beside it ({', '.join(heads)}: {len(others)} tensors)")
            state_dict = {key[len("backbone.") :]: value for key, value in state_dict.items() if key.startswith("backbone.")}
            continue
        return state_dict


def flatten_block_chunks(state_dict: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """`blocks.{chunk}.{i}.*` (DINOv2's `block_chunks` for FSDP, dinov2/models/vision_transformer.py:
    chunk c holds blocks i with their global index) -> `blocks.{i}.*`, numbered in (chunk, i) order."""
    chunked = {key: match for key in state_dict if (match := _CHUNKED_BLOCK.match(key))}
    if not chunked:
        return state_dict
    plain = [key for key in state_dict if key.startswith("blocks.") and key not in chunked]
    if plain:
        raise CheckpointError(f"{path}: mixes chunked blocks.{{chunk}}.{{i}} keys with plain block keys: {listing(plain)}")
    order = sorted({(int(match[1]), int(match[2])) for match in chunked.values()})
    index = {pair: position for position, pair in enumerate(order)}
    return {
        (f"blocks.{index[(int(chunked[key][1]), int(chunked[key][2]))]}.{chunked[key][3]}" if key in chunked else key): value
        for key, value in state_dict.items()
    }


def _refuse_mef(checkpoint: Mapping, path: Path) -> None:
    """Refuse MEF's Lightning checkpoint (its LoRA and refine_conv are not a ViT state dict), saying what to do."""
    if any(_MEF_KEY.match(str(key)) for key in checkpoint):
        raise CheckpointError(
            f"{path} is a MEF checkpoint (PyTorch Lightning .ckpt: LoRA w_a_*/w_b_* and refine_conv, without the"
            " DINOv2 weights): load it with snd_hf.baselines.load_baseline(path, base=DINOV2_WEIGHTS), or"
            f" snd eval --model mef={path}@DINOV2_WEIGHTS"
        )


def from_transformers_layout(state_dict: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], str] | None:
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


def from_timm_layout(state_dict: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], str]:
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


def layout_hint(keys: list[str]) -> str:
    """What the keys of a refused state dict look like and what to do about it, as one sentence ("" if
    nothing is recognised): torch.compile or wrapper prefixes, peft, snd-hf native names, a timm head."""
    keys = [str(key) for key in keys]
    if any("._orig_mod." in "." + key for key in keys):
        return (
            "torch.compile's '_orig_mod.' prefix is inside the keys (a compiled submodule): save the state dict of the"
            " module before compiling, or strip '_orig_mod.'"
        )
    if any(marker in "." + key for key in keys for marker in PEFT_MARKERS):
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
