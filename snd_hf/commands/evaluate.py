"""Options of `snd eval` (run by :mod:`snd_hf.eval.suite`)."""

from __future__ import annotations

import argparse

# Owned by snd_hf.eval (datasets.TASKS, suite.PRESETS); named here so that --help and a bad task or
# preset need no torch. tests/test_cli.py checks both against their owners.
TASKS = ("depth", "normals", "segmentation", "correspondence")
PRESET_NAMES = ("cpu", "paper")
RESIZE_PROTOCOLS = ("torchhub", "timm")  # owned by snd_hf.eval.protocol


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=(*TASKS, "all"), help="probe to run, or all")
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="PATH or NAME=PATH (repeat to compare); PATH init:RUN_DIR is the start of the training run in RUN_DIR;"
        " CKPT@BASE is MEF's checkpoint on its DINOv2 weights",
    )
    parser.add_argument("--data", required=True, help="synthetic, or KIND=ROOT (nyuv2, scannetpp, kitti, ade20k, voc, scannet1500)")
    parser.add_argument("--out", default="eval_out", help="output folder (default: eval_out)")
    parser.add_argument("--preset", choices=PRESET_NAMES, default="cpu", help="probe lengths and sizes (default: cpu)")
    parser.add_argument("--concat-with", default=None, help="FiT3D mode: concatenate this model's features in front")
    parser.add_argument("--cache-dir", default=None, help="result and generated-data cache (default: OUT/cache)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of another evaluation in OUT (only the files its snd_run.json lists), or write into a folder no snd run wrote",
    )
    parser.add_argument(
        "--resize",
        choices=RESIZE_PROTOCOLS,
        default=None,
        help="position-embedding resize of every probe (default: per probe, the paper's: timm for depth and"
        " segmentation, torchhub for normals and correspondence)",
    )
    parser.add_argument("--steps", type=int, default=None, help="override every probe's (most) training steps (default: the preset's)")
    parser.add_argument(
        "--synthetic-size", default=None, metavar="SxFxHxW", help="generated benchmark: scenes x frames x height x width (default: the preset's, cpu 32x6x96x128)"
    )
