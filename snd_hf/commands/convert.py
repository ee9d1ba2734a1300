"""Options of `snd convert` (run by :mod:`snd_hf.convert`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..schema import number_option


def _bool_or_none(text: str) -> bool | None:
    choices = {"true": True, "false": False, "unknown": None}
    if text.lower() not in choices:
        raise argparse.ArgumentTypeError(f"expected true, false or unknown, got {text!r}")
    return choices[text.lower()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="original-layout checkpoint file, or a native checkpoint directory")
    parser.add_argument(
        "destination", type=Path, help="a directory name (native output) or a .pth file (original layout + .pth.json sidecar)"
    )
    parser.add_argument("--size", choices=["small", "base"], help="published variant to record (file source)")
    parser.add_argument("--blending", type=_bool_or_none, default=None, help="record SnD blending: true/false/unknown (file source)")
    parser.add_argument(
        "--num-heads", "--num-attention-heads", dest="num_attention_heads", type=number_option(int, 1),
        help="attention heads (file source); default: its sidecar, else hidden size / 64",
    )
    parser.add_argument("--lora-alpha", type=number_option(float), help="LoRA alpha, for a checkpoint with one unmerged peft adapter")
    parser.add_argument("--use-rslora", action="store_true", help="that adapter uses rank-stabilised scaling (alpha / sqrt(r))")
    parser.add_argument("--lora-config", type=Path, help="peft adapter_config.json of the unmerged adapter (instead of --lora-alpha)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing destination")
