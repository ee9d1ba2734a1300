"""The JSON sidecar beside an original-layout .pth: what its tensors cannot tell (head count, resize
numerics, variant, training record), tied to the file by its SHA-256."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..configuration_snd import SnDConfig
from ..files import atomic_write, sha256_file
from ..schema import read_json
from .architecture import infer_config_from_original, original_shapes
from .errors import CheckpointError, listing

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
            f" {listing(disagreeing)}); delete the sidecar and pass the architecture instead"
        )
    return config
