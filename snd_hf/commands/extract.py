"""Options of `snd extract` (run by :mod:`snd_hf.extract`), the model options it shares with `snd demo`,
and the check of both commands' image files (:func:`snd_hf.images.check_images`), which runs before torch loads."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..images import MAX_PIXELS, check_images
from ..schema import MAX_IMAGE_SIDE, number_option

# Owned by snd_hf.extract (DTYPES); named here so that --help needs no torch (tests/test_cli.py checks it).
DTYPE_NAMES = ("float32", "bfloat16")


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
        "--shortest-edge",
        type=number_option(int, 14, MAX_IMAGE_SIDE),
        default=shortest_edge,
        help="resize the shortest image edge to this many pixels",
    )
    parser.add_argument("--pca-scale", type=number_option(int, 1, 64), default=14, help="pixels per patch in the PCA picture (the image beside it is resized to match)")
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
    parser.add_argument("images", nargs="*", type=Path, help="image files (anything pillow reads), or use --dataset")
    parser.add_argument("--dataset", help="a datasets image dataset instead of files: a save_to_disk folder, an image folder, a Hub id")
    parser.add_argument("--split", default="train", help="--dataset split")
    parser.add_argument("--streaming", action="store_true", help="stream --dataset (IterableDataset; needs --format shards)")
    parser.add_argument("--image-column", help="--dataset column holding the images (default: its first image column)")
    add_model_arguments(parser, model_required=True, shortest_edge=448)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--format", choices=["files", "shards"], default="files", help="one safetensors + PCA picture per image, or Parquet shards"
    )
    parser.add_argument("--shard-size", type=positive_int, default=1000, help="images per shard (--format shards)")
    parser.add_argument(
        "--dtype", choices=["auto", *DTYPE_NAMES], default="auto", help="model dtype; auto: bfloat16 on GPUs that support it, else float32"
    )


def check(args: argparse.Namespace) -> None:
    """The image files exist, are readable and are images, checked before the model's imports
    (torch) load: :func:`check_images` (its errors). ``--dataset`` is checked when it opens."""
    if args.images:
        check_images(args.images, args.max_pixels)
