"""Options of `snd field fit|segment|edit` (run by :mod:`snd_hf.fields.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..schema import MIN_SH_DEGREE, number_option
from .synth import parse_size

# Owned by snd_hf.fields (fit.FitConfig, segment.SIMILARITY / HIGHLIGHT_RATIO); written out here so
# that --help needs no torch. tests/test_cli.py checks them against their owners.
FIT_DEFAULTS = {
    "appearance_steps": 300,
    "feature_steps": 300,
    "feature_dim": 32,
    "sh_degree": 3,
    "init_views": 8,
    "init_stride": 2,
    "seed": 0,
}
SIMILARITY = 0.6
HIGHLIGHT_RATIO = 0.5
METHODS = ("region", "threshold")
MAX_SPECULAR_SCALE = 1000.0
MAX_ROUGHNESS = 1000.0
OVERWRITE_HELP = (
    "replace the panels of another run in OUT (only the files its snd_run.json lists), or write into a folder no snd run wrote"
)

VIEW_HELP = (
    "view clicked in: its index, from 0, among the field's views in the order of the scene's "
    "transforms_train.json; the panels' names pair each index with its frame (e.g. 003_frame_000004.png); "
    "required unless --image"
)


def _pair(text: str) -> tuple[int, int]:
    try:
        x, y = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a click must look like X,Y (pixel column,row), got {text!r}") from None
    return x, y


def _selection_spec(text: str) -> tuple[int, tuple[int, int]]:
    view, separator, click = text.partition(":")
    if not separator:
        raise argparse.ArgumentTypeError(f"--select must look like VIEW:X,Y (e.g. 3:64,50), got {text!r}")
    try:
        return int(view), _pair(click)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--select must look like VIEW:X,Y (e.g. 3:64,50), got {text!r}") from None


def _color(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0.0 <= value <= 1.0 for value in values):
        raise argparse.ArgumentTypeError(f"a colour must be R,G,B in [0, 1] (e.g. 0.2,0.5,0.9), got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="field_command", required=True, metavar="{fit,segment,edit}")
    defaults = FIT_DEFAULTS

    fit = commands.add_parser(
        "fit",
        help="fit a field to a scene folder (ScanNet++ layout)",
        description="Fit a disentangled feature field to a scene folder; writes the field and pictures/ of its views.",
        formatter_class=parser.formatter_class,  # snd's: every default shown
    )
    fit.add_argument("scene", type=Path, help="scene folder holding transforms_train.json, images/ and depth/")
    fit.add_argument("--model", required=True, help="2D teacher: SnD checkpoint folder, Hub id or original .pth")
    fit.add_argument("--out", type=Path, required=True, help="field folder to write")
    fit.add_argument("--size", type=parse_size, help="resize the views to HxW (default: native)")
    fit.add_argument("--hold-out", type=number_option(int, 0), default=0, help="keep every N-th view out of the fit (0: fit all)")
    fit.add_argument("--appearance-steps", type=number_option(int, 0), default=defaults["appearance_steps"], help="stage-1 (colour, geometry) steps")
    fit.add_argument("--feature-steps", type=number_option(int, 0), default=defaults["feature_steps"], help="stage-2 (features) steps")
    fit.add_argument("--feature-dim", type=number_option(int, 1, 4096), default=defaults["feature_dim"], help="PCA channels of the features")
    fit.add_argument("--sh-degree", type=number_option(int, MIN_SH_DEGREE, 16), default=defaults["sh_degree"], help="degree of the view-dependent parts (>= 2)")
    fit.add_argument("--init-views", type=number_option(int, 1), default=defaults["init_views"], help="views lifted to Gaussians")
    fit.add_argument("--init-stride", type=number_option(int, 1), default=defaults["init_stride"], help="pixel stride of the lifted views")
    fit.add_argument("--single", action="store_true", help="a single view-independent feature field (baseline)")
    fit.add_argument("--seed", type=number_option(int, 0), default=defaults["seed"], help="random seed (the fit is deterministic given it)")
    fit.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")

    segment = commands.add_parser(
        "segment",
        help="select an object in 3D with one click; highlight masks",
        description="Select the Gaussians of the object under one click (on a view of the field, or on --image) "
        "and draw, per view, the view, the 3D selection over it and the highlight mask.",
        formatter_class=parser.formatter_class,
    )
    segment.add_argument("field", type=Path, help="field folder written by `snd field fit`")
    segment.add_argument("--view", type=number_option(int, 0), help=VIEW_HELP)
    segment.add_argument("--click", type=_pair, help="X,Y pixel of the click (or --all)")
    segment.add_argument("--all", action="store_true", help="segment everything into objects, no click")
    segment.add_argument("--image", type=Path, help="click on this picture instead of a view (needs --model)")
    segment.add_argument("--model", help="the field's teacher, to read the feature under a click on --image")
    segment.add_argument("--method", choices=METHODS, default="region",
                         help="region: grow over the Gaussians' neighbour graph; threshold: cosine >= --threshold")  # fmt: skip
    segment.add_argument("--threshold", type=number_option(float, -1, 1), default=SIMILARITY, help="cosine similarity of selected Gaussians (--method threshold)")
    segment.add_argument("--highlight-ratio", type=number_option(float, 0), default=HIGHLIGHT_RATIO, help="|f_dep| / |f_ind| of highlights")
    segment.add_argument("--out", type=Path, required=True, help="folder for the PNG panels")
    segment.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    edit = commands.add_parser(
        "edit",
        help="recolour, remove reflections or change roughness of a selection",
        description="Edit the Gaussians selected by one click and draw each view before and after.",
        formatter_class=parser.formatter_class,
    )
    edit.add_argument("field", type=Path, help="field folder written by `snd field fit`")
    edit.add_argument("--select", type=_selection_spec, required=True, help="VIEW:X,Y click selecting the object (VIEW as in segment --view)")
    edit.add_argument("--method", choices=METHODS, default="region", help="selection rule (see `snd field segment`)")
    edit.add_argument("--threshold", type=number_option(float, -1, 1), default=SIMILARITY, help="cosine similarity of selected Gaussians (--method threshold)")
    edit.add_argument("--remove-reflections", action="store_true", help="remove the selection's specular colour")
    edit.add_argument("--specular-scale", type=number_option(float, 0, MAX_SPECULAR_SCALE), help="multiply the selection's specular colour")
    edit.add_argument("--recolor", type=_color, help="new diffuse colour R,G,B in [0, 1]")
    edit.add_argument("--roughness", type=number_option(float, 0, MAX_ROUGHNESS), help="Ref-NeRF roughness of the selection's reflections (0: as fitted)")
    edit.add_argument("--save-field", type=Path, help="also write the edited field here")
    edit.add_argument("--out", type=Path, required=True, help="folder for the before/after PNG panels")
    edit.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
