"""The `snd` command line: `snd demo | extract | convert | synth | eval`.

Each subcommand lives in the module that owns the feature, which exposes
``add_arguments(parser)`` and ``run(args) -> int | None``. A module is imported only when
its command runs, so `snd --help` stays fast and light.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Register a command with one line: name -> (module, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("snd_hf.convert", "convert original DINOv2/SnD .pth <-> native snd-hf directory"),
    "demo": ("snd_hf.demo", "feature extraction demo on packaged images (offline: embedded checkpoint)"),
    "extract": ("snd_hf.extract", "dense SnD features of images: safetensors + PCA pictures"),
    "synth": ("snd_hf.data.synthetic", "generate procedural indoor scenes in the ScanNet++ layout"),
    "eval": ("snd_hf.eval.suite", "compare models with frozen-feature probes (depth, normals, segmentation, correspondence)"),
    "field": ("snd_hf.fields.cli", "disentangled 3D feature fields: fit a scene, click-segment in 3D, edit reflections"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snd", description="Splat and Distill: 3D-aware DINOv2 features.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        subparser.set_defaults(_module=module_name)
        if argv[:1] == [name]:  # only the chosen command's module is imported
            importlib.import_module(module_name).add_arguments(subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    return importlib.import_module(args._module).run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
