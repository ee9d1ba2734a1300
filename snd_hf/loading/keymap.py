"""The original torch.hub DINOv2 <-> snd-hf `SnDModel` key map, as data, and the renaming it drives."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

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


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)") + r"\Z")


FORWARD = tuple((_compile(source), target) for source, target in ORIGINAL_TO_HF)
BACKWARD = tuple((_compile(target), source) for source, target in ORIGINAL_TO_HF)


def rename(state_dict: Mapping[str, Any], rules) -> tuple[dict[str, Any], list[str]]:
    """`state_dict` under the names `rules` (`FORWARD` or `BACKWARD`) give, and the keys no rule matches."""
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
