"""Strict conversion between the original torch.hub DINOv2 state dict and snd-hf `SnDModel` weights:
every missing, unexpected and misshaped key is reported at once in one `CheckpointError`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..configuration_snd import SnDConfig
from .architecture import (
    check_architecture,
    infer_config_from_original,
    original_shapes,
    shape_of,
)
from .errors import CheckpointError, listing
from .keymap import BACKWARD, FORWARD, rename
from .layouts import layout_hint


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
    check_architecture(state_dict, expected, what, layers)
    missing = list(also_missing or []) + sorted(set(expected) - set(state_dict))  # summaries first: never cut off
    unexpected = sorted(unknown + [key for key in state_dict if key not in expected])
    misshaped = [
        f"{key}: expected {shape_of(expected[key])}, got {shape_of(value)}"
        for key, value in state_dict.items()
        if key in expected and shape_of(value) != shape_of(expected[key])
    ]
    problems = [
        f"{label} ({len(items)}): {listing(items)}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped))
        if items
    ]
    if problems:
        raise CheckpointError(f"{what} does not match the expected weights; " + "; ".join(problems))


def expected_shapes(config: SnDConfig, num_layers: int | None = None) -> dict[str, tuple[int, ...]]:
    """`original_shapes` under snd-hf `SnDModel` names."""
    renamed, unknown = rename(original_shapes(config, num_layers), FORWARD)
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
    renamed, unknown = rename(state_dict, FORWARD)
    try:
        check_state_dict(renamed, expected_shapes(config), unknown, "original state dict")
    except CheckpointError as error:
        hint = layout_hint(unknown)
        raise CheckpointError(f"{error}; {hint}" if hint else str(error)) from None
    return renamed


def to_original_state_dict(hf_state_dict: Mapping[str, torch.Tensor], config: SnDConfig) -> dict[str, torch.Tensor]:
    """Rename snd-hf `SnDModel` weights to the original torch.hub DINOv2 layout, strictly (the inverse
    of `convert_original_state_dict`). Raises CheckpointError listing every mismatching key."""
    check_state_dict(hf_state_dict, expected_shapes(config), [], "SnD state dict")
    renamed, unknown = rename(hf_state_dict, BACKWARD)
    assert not unknown, f"keys without an original name: {unknown}"
    return renamed
