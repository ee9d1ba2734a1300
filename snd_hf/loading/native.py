"""Native (`save_pretrained`) weights checked against their config from the safetensors headers
alone, before anything of the claimed size is built."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from ..configuration_snd import SnDConfig
from .architecture import SHAPE_FIELDS
from .conversion import check_state_dict, expected_shapes
from .errors import CheckpointError
from .reading import named_tensors, read_checkpoint_file

EXTRA_LAYERS_LISTED = 2  # layers a native config declares beyond the weights whose keys are named one by one
_DEFAULT_LAYERS = next(field.default for field in dataclasses.fields(SnDConfig) if field.name == "num_hidden_layers")


def read_native_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor in a native checkpoint's weight files, from the safetensors headers
    alone (nothing is loaded; a `pytorch_model.bin` is read with `read_checkpoint_file`).

    Raises:
        CheckpointError: a file that is not valid safetensors, naming it.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        if file.suffix != ".safetensors":
            shapes.update({key: tuple(value.shape) for key, value in named_tensors(read_checkpoint_file(file))})
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
    check_state_dict(shapes, expected_shapes(listing), [], what, also_missing=summary, layers=declared)
