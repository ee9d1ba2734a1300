"""`snd convert`: original torch.hub DINOv2 / SnD checkpoints <-> native snd-hf directories.

    snd convert dinov2_vits14_snd.pth out/snd-small --size small --blending
    snd convert out/snd-small snd_small_original.pth

A file source (.pth/.pt/.safetensors, original key layout) becomes a directory with config.json,
model.safetensors and preprocessor_config.json; a directory source (save_pretrained layout) becomes an
original-layout .pth that torch.hub DINOv2 loads with strict=True. Each output is written under a
temporary name, re-read and compared with the source, and only then renamed into place.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from .files import replace_path
from .loading import CheckpointError, save_original_checkpoint
from .modeling_snd import SnDModel


def _bool_or_none(text: str) -> bool | None:
    choices = {"true": True, "false": False, "unknown": None}
    if text.lower() not in choices:
        raise argparse.ArgumentTypeError(f"expected true, false or unknown, got {text!r}")
    return choices[text.lower()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="original checkpoint file, or a native checkpoint directory")
    parser.add_argument("destination", type=Path, help="native directory (from a file) or .pth file (from a directory)")
    parser.add_argument("--size", choices=["small", "base"], help="published variant to record in the config")
    parser.add_argument("--blending", type=_bool_or_none, default=None, help="record SnD blending: true/false/unknown")
    parser.add_argument("--num-attention-heads", type=int, help="heads, if not hidden_size / 64")
    parser.add_argument("--lora-alpha", type=float, help="LoRA alpha, for checkpoints with unmerged PEFT adapters")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing destination")


def _check_same_weights(expected: SnDModel, actual: SnDModel, what: str) -> None:
    expected_state, actual_state = expected.state_dict(), actual.state_dict()
    if expected_state.keys() != actual_state.keys():
        raise CheckpointError(f"{what} has other weights than the source: {sorted(expected_state.keys() ^ actual_state.keys())}")
    differing = [key for key in expected_state if not torch.equal(expected_state[key], actual_state[key])]
    if differing:
        raise CheckpointError(f"{what} does not reproduce the source weights (differs at {differing[:5]})")


def original_to_native(
    source: Path,
    destination: Path,
    overwrite: bool = False,
    lora_alpha: float | None = None,
    **config_overrides,
) -> Path:
    """Convert an original-layout checkpoint file into a native directory (see module docstring)."""
    if destination.exists() and not overwrite:
        raise FileExistsError(f"{destination} exists; pass --overwrite to replace it")
    config_overrides = {key: value for key, value in config_overrides.items() if value is not None}
    model = SnDModel.from_original_checkpoint(source, lora_alpha=lora_alpha, **config_overrides)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        model.save_pretrained(temporary)  # config, weights and preprocessor_config.json
        _check_same_weights(model, SnDModel.from_pretrained(temporary), f"the converted directory for {source}")
        replace_path(temporary, destination)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return destination


def native_to_original(source: Path, destination: Path, overwrite: bool = False) -> Path:
    """Convert a native directory into an original-layout .pth (see module docstring)."""
    if destination.exists() and not overwrite:
        raise FileExistsError(f"{destination} exists; pass --overwrite to replace it")
    model = SnDModel.from_pretrained(source)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        written = save_original_checkpoint(model, temporary / destination.name)
        reloaded = SnDModel.from_original_checkpoint(written, num_attention_heads=model.config.num_attention_heads)
        _check_same_weights(model, reloaded, f"the converted file for {source}")
        replace_path(written, destination)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return destination


def run(args: argparse.Namespace) -> int:
    if args.source.is_dir():
        native_to_original(args.source, args.destination, overwrite=args.overwrite)
    elif args.source.is_file():
        original_to_native(
            args.source,
            args.destination,
            overwrite=args.overwrite,
            lora_alpha=args.lora_alpha,
            size=args.size,
            blending=args.blending,
            num_attention_heads=args.num_attention_heads,
        )
    else:
        raise FileNotFoundError(f"source not found: {args.source}")
    print(f"wrote {args.destination}")
    return 0


__all__ = ["add_arguments", "native_to_original", "original_to_native", "run"]
