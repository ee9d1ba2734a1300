"""Unmerged peft LoRA weights merged exactly as peft's `merge_and_unload()`; the peft weights it cannot
merge are refused by name (`read_original_checkpoint` documents the rules)."""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..schema import read_json
from .errors import CheckpointError, listing

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
PEFT_MARKERS = (".lora_", ".base_layer.", ".modules_to_save.", ".original_module.", *(f".{name}" for name in _PEFT_UNSUPPORTED))


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


def merge_lora(
    state_dict: dict[str, torch.Tensor], lora_alpha: float | None, use_rslora: bool, lora_config: object
) -> dict[str, torch.Tensor]:
    """Merge unmerged peft LoRA weights exactly as peft's `merge_and_unload()` (the rules: docstring of
    `read_original_checkpoint`); refuse, naming them, the peft weights it cannot merge."""
    peft_keys = [key for key in state_dict if any(marker in "." + key for marker in PEFT_MARKERS)]
    if not peft_keys:
        return state_dict
    unsupported = sorted({feature for key in peft_keys for name, feature in _PEFT_UNSUPPORTED.items() if f".{name}" in "." + key})
    if unsupported:
        found = [key for key in peft_keys if any(f".{name}" in "." + key for name in _PEFT_UNSUPPORTED)]
        raise CheckpointError(
            f"peft weights this loader cannot merge ({', '.join(unsupported)}): {listing(found)}; merge them with"
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
        raise CheckpointError(f"peft LoRA weights of an unknown kind: {listing(leftovers)}")
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
