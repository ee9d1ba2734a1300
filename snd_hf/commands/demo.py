"""Options of `snd demo` (run by :mod:`snd_hf.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..schema import number_option
from .extract import add_model_arguments, check

__all__ = ["add_arguments", "check"]  # check: --images, as snd extract's image files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, model_required=False, shortest_edge=224)
    parser.add_argument("--images", nargs="+", type=Path, help="images to use instead of the packaged views")
    parser.add_argument(
        "--init", help="initial model (before SnD) for the correspondence picture (default: the embedded checkpoint's start)"
    )
    parser.add_argument("--out", type=Path, default=Path("snd-demo"), help="output folder (default ./snd-demo)")
    parser.add_argument("--timeout", type=number_option(float, 0, 600), default=3.0, help="seconds to wait for the Hub before falling back")
