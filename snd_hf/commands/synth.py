"""Options of `snd synth` (run by :mod:`snd_hf.data.synthetic`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..schema import number_option


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HxW (e.g. 96x128), got {text!r}") from None
    return height, width


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenes", type=number_option(int, 1), default=8, help="number of rooms")
    parser.add_argument("--frames", type=number_option(int, 1), default=24, help="frames per room")
    parser.add_argument("--size", type=parse_size, default=(96, 128), help="image size HxW")
    parser.add_argument("--seed", type=number_option(int, 0), default=0, help="random seed of the rooms and camera paths")
    parser.add_argument("--format", choices=("png", "jpg"), default="png", help="image file format")
    parser.add_argument("--glossy", action="store_true", help="specular highlights on some objects, with their ground truth")
    parser.add_argument("--out", type=Path, required=True, help="output folder (gets scenes/<id>/...)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out even if it holds files snd synth did not write (they are deleted)"
    )
