"""Options of `snd extract` (run by :mod:`snd_hf.extract`) and the model options it shares with `snd demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..images import MAX_PIXELS


def parse_bool(text: str) -> bool:
    choices = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in choices:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return choices[text.lower()]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser, model_required: bool, shortest_edge: int) -> None:
    """Options choosing the model, its preprocessing and the run, shared by `snd extract` and `snd demo`."""
    parser.add_argument(
        "--model",
        required=model_required,
        help="Hub repo id or local folder (native checkpoint, or laid out like david-shavin/SnD)",
    )
    parser.add_argument("--size", choices=["small", "base"], help="published variant size (default small)")
    parser.add_argument("--blending", type=parse_bool, help="published variant: true (default) or false")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    parser.add_argument(
        "--shortest-edge", type=int, default=shortest_edge, help="resize the shortest image edge to this many pixels"
    )
    parser.add_argument("--pca-scale", type=int, default=14, help="PCA picture pixels per patch")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images run through the model at once")
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=MAX_PIXELS,
        help="refuse images declaring more pixels than this, before decoding them",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the output folder's features of another model, and files no recorded run wrote",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, help="image files (anything pillow reads)")
    add_model_arguments(parser, model_required=True, shortest_edge=448)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
