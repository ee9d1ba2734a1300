"""`snd convert`: original torch.hub DINOv2 / SnD checkpoints <-> native snd-hf directories.

    snd convert dinov2_vits14_snd.pth out/snd-small --size small --blending true
    snd convert out/snd-small snd_small_original.pth
    snd convert eval/training_99/teacher_checkpoint.pth dinov2_teacher.pth

The direction comes from the source and the destination's name:

- a file source (any layout `loading.load_original_checkpoint` recognises) and a destination without a
  checkpoint suffix: a native directory with config.json, model.safetensors and preprocessor_config.json;
- a file or directory source and a destination ending in .pth/.pt: an original-layout .pth that
  torch.hub DINOv2 loads with strict=True, plus its sidecar `<name>.pth.json` (the head count and the
  other fields the tensors cannot tell), which `from_original_checkpoint` and this command read back;
- anything else (a directory to a directory, a .safetensors/.bin/.ckpt destination) is refused.

The original layout has no config: the head count comes from the sidecar, or `--num-heads`, or is
guessed as hidden / 64 (with a warning unless the width is a published ViT's). Each output is written
under a temporary name, re-read and compared with the source (weights and architecture), and only then
renamed into place; running out of disk space or over `ulimit -f` leaves the old output untouched.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from .configuration_snd import SnDConfig
from .files import (
    explain_write_errors,
    make_temporary,
    replace_path,
    restore_interrupted,
)
from .loading.architecture import SHAPE_FIELDS
from .loading.errors import CheckpointError
from .loading.original import save_original_checkpoint
from .loading.reading import CHECKPOINT_SUFFIXES
from .loading.sidecar import sidecar_path
from .modeling_snd import SnDModel

ORIGINAL_SUFFIXES = (".pth", ".pt")
# Config fields that must survive a conversion for the features to be the same.
_ARCHITECTURE = (*SHAPE_FIELDS, "num_attention_heads", "hidden_act", "layer_norm_eps", "interpolate_offset", "interpolate_antialias")


def _check_same(expected: SnDModel, actual: SnDModel, what: str) -> None:
    """Raise unless `actual` has `expected`'s weights (bit for bit) and architecture."""
    expected_state, actual_state = expected.state_dict(), actual.state_dict()
    if expected_state.keys() != actual_state.keys():
        raise CheckpointError(f"{what} has other weights than the source: {sorted(expected_state.keys() ^ actual_state.keys())}")
    differing = [key for key in expected_state if not torch.equal(expected_state[key], actual_state[key])]
    if differing:
        raise CheckpointError(f"{what} does not reproduce the source weights (differs at {differing[:5]})")
    changed = [name for name in _ARCHITECTURE if getattr(expected.config, name) != getattr(actual.config, name)]
    if changed:
        raise CheckpointError(f"{what} does not reproduce the source architecture (differs in {changed})")


def _check_destination(destination: Path, overwrite: bool) -> None:
    restore_interrupted(destination)
    if destination.exists() and not overwrite:
        raise FileExistsError(f"{destination} exists; pass --overwrite to replace it")


def original_to_native(
    source: Path,
    destination: Path,
    overwrite: bool = False,
    lora_alpha: float | None = None,
    use_rslora: bool = False,
    lora_config: Path | None = None,
    **config_overrides,
) -> SnDModel:
    """Convert an original-layout checkpoint file into a native directory (see module docstring).

    Returns:
        the converted model (its config says what was written).
    """
    _check_destination(destination, overwrite)
    config_overrides = {key: value for key, value in config_overrides.items() if value is not None}
    model = SnDModel.from_original_checkpoint(
        source, lora_alpha=lora_alpha, use_rslora=use_rslora, lora_config=lora_config, **config_overrides
    )
    temporary = make_temporary(destination, directory=True)
    try:
        with explain_write_errors(destination):
            model.save_pretrained(temporary)  # config, weights and preprocessor_config.json
        _check_same(model, SnDModel.from_pretrained(temporary), f"the converted directory for {source}")
        replace_path(temporary, destination)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return model


def to_original(source: Path, destination: Path, overwrite: bool = False, **load_options) -> SnDModel:
    """Write a native directory, or an original-layout file in any recognised layout, as a plain
    original-layout .pth with its sidecar (see module docstring).

    Args:
        load_options: for a file source, `SnDModel.from_original_checkpoint` arguments (LoRA, config fields).
    Returns:
        the converted model.
    """
    _check_destination(destination, overwrite)
    if source.is_dir():
        model = SnDModel.from_pretrained(source)
    else:
        options = {key: value for key, value in load_options.items() if value is not None}
        model = SnDModel.from_original_checkpoint(source, **options)
    temporary = make_temporary(destination, directory=True)
    try:
        with explain_write_errors(destination):
            written = save_original_checkpoint(model, temporary / destination.name)
        _check_same(model, SnDModel.from_original_checkpoint(written), f"the converted file for {source}")
        replace_path(written, destination)
        replace_path(sidecar_path(written), sidecar_path(destination))
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return model


def native_to_original(source: Path, destination: Path, overwrite: bool = False) -> SnDModel:
    """Convert a native directory into an original-layout .pth and its sidecar (see module docstring)."""
    return to_original(source, destination, overwrite=overwrite)


def _direction(source: Path, destination: Path) -> str:
    """"native" or "original", from the source kind and the destination's suffix; contradictions refused."""
    suffix = destination.suffix.lower()
    if suffix in ORIGINAL_SUFFIXES:
        return "original"
    if suffix in CHECKPOINT_SUFFIXES:
        raise ValueError(
            f"destination {destination}: original-layout output is written as .pth (what torch.hub loads) and native"
            " output as a directory; give a name ending in .pth, or one without a checkpoint suffix"
        )
    if source.is_dir():
        raise ValueError(
            f"{source} is already a native directory; to write the original layout give a destination ending in .pth"
        )
    return "native"


def _describe(config: SnDConfig) -> str:
    variant = f", variant {config.size}" if config.size else ""
    return f"hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} heads{variant}"


def run(args: argparse.Namespace) -> int:
    source, destination = args.source, args.destination
    restore_interrupted(source)
    if not source.exists():
        raise FileNotFoundError(f"source not found: {source}")
    direction = _direction(source, destination)
    file_options = {
        "lora_alpha": args.lora_alpha,
        "use_rslora": args.use_rslora,
        "lora_config": args.lora_config,
        "size": args.size,
        "blending": args.blending,
        "num_attention_heads": args.num_attention_heads,
    }
    given = sorted(key for key, value in file_options.items() if value not in (None, False))
    if source.is_dir() and given:
        raise ValueError(f"{given} apply to an original-layout file source; the config.json of {source} already sets them")
    if direction == "native":
        model = original_to_native(source, destination, overwrite=args.overwrite, **file_options)
        files = ", ".join(sorted(path.name for path in destination.iterdir()))
        print(f"wrote native SnD directory {destination} ({files}): {_describe(model.config)}")
    else:
        model = to_original(source, destination, overwrite=args.overwrite, **file_options)
        print(
            f"wrote original-layout checkpoint {destination} (torch.hub DINOv2 keys) and its sidecar"
            f" {sidecar_path(destination).name}: {_describe(model.config)}"
        )
    return 0


__all__ = ["native_to_original", "original_to_native", "run", "to_original"]
