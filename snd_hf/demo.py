"""`snd demo`: SnD features of a few packaged views of one scene, as files and pictures, in seconds.

    snd demo                        # published weights if the Hub answers, else the embedded checkpoint
    snd demo --model path/or/repo --out my-demo

With no ``--model`` the published ``david-shavin/SnD`` (``--size``/``--blending``, default small with
blending) is used when the Hub answers within ``--timeout`` seconds or the weights are already
cached; otherwise (offline, unreachable) the checkpoint embedded in ``snd_hf/assets/default/`` is
used: a tiny ViT trained for a few dozen steps on generated scenes by the default run of
``training/train.py`` (it shows the pipeline, not SnD's feature quality). The packaged views are
frames of one generated room (see ``snd_hf/assets/make_assets.py``). Writes, per view,
``{stem}.safetensors`` and ``{stem}_pca.png`` (as ``snd extract``), and ``panel.png``: every view
beside its features, coloured with ONE PCA fitted on all views so that the same colour means the
same feature across views. The folder records its model in ``snd_run.json``
(:class:`snd_hf.run_folder.RunFolder`): a demo with another model replaces the earlier demo's files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import httpx

from .extract import (
    add_model_arguments,
    check_images,
    extract_to_folder,
    load_model,
    load_processor,
    open_run_folder,
)
from .hub import SND_HUB_REPO
from .images import load_rgb
from .modeling_snd import SnDModel
from .visualization import fit_pca, save_panel

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_CHECKPOINT = ASSETS / "default"
DEMO_IMAGES = ASSETS / "demo"
EMBEDDED = "embedded default checkpoint"
PANEL = "panel.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, model_required=False, shortest_edge=224)
    parser.add_argument("--images", nargs="+", type=Path, help="images to use instead of the packaged views")
    parser.add_argument("--out", type=Path, default=Path("snd-demo"), help="output folder (default ./snd-demo)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the Hub before falling back")


def demo_model(
    model: str | None, size: str | None, blending: bool | None, revision: str | None, timeout: float
) -> tuple[SnDModel, str]:
    """The model the demo runs and its description: ``model`` if given, else the published weights
    when reachable (or cached), else the embedded default checkpoint."""
    if model is not None:
        return load_model(model, size, blending, revision), str(model)
    try:
        if not constants.HF_HUB_OFFLINE:
            HfApi().model_info(SND_HUB_REPO, revision=revision, timeout=timeout)  # fails fast when unreachable
        return load_model(SND_HUB_REPO, size, blending, revision), SND_HUB_REPO
    except (OSError, HfHubHTTPError, httpx.HTTPError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"{SND_HUB_REPO} is not available ({reason}); using the {EMBEDDED} ({DEFAULT_CHECKPOINT}).")
        return load_model(DEFAULT_CHECKPOINT, None, None, None), EMBEDDED


def run(args: argparse.Namespace) -> int:
    paths = check_images(list(args.images) if args.images else sorted(DEMO_IMAGES.glob("*.png")), args.max_pixels)
    model, name = demo_model(args.model, args.size, args.blending, args.revision, args.timeout)
    processor = load_processor(DEFAULT_CHECKPOINT if name == EMBEDDED else name, args.shortest_edge, args.max_pixels)
    # A demo folder follows the model of its latest run: another model's files are replaced, not mixed.
    folder, metadata = open_run_folder(
        args.out, "snd demo", model, processor, paths, name, args.overwrite, replace_other_run=True, extra_outputs=[PANEL]
    )
    with folder:
        written = list(extract_to_folder(model, processor, paths, args.out, metadata, args.pca_scale, args.batch_size))

        # One projection for all views: [C, sum of h*w, 1] holds every patch of every view.
        maps = [features.feature_map for _, _, features in written]
        projection = fit_pca(torch.cat([feature_map.flatten(1) for feature_map in maps], dim=1)[..., None])
        columns = []
        for path, feature_map in zip(paths, maps):
            columns += [load_rgb(path, max_pixels=args.max_pixels), projection(feature_map)]  # decoded again: a few views
        height = maps[0].shape[1] * model.config.patch_size
        panel = save_panel(columns, args.out / PANEL, height=height)

    print(f"model: {name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters)")
    for feature_path, picture, features in written:
        channels, height, width = features.feature_map.shape
        print(f"  {feature_path} ({channels}x{height}x{width})  {picture}")
    print(f"panel (image | features, one PCA for all views): {panel}")
    return 0
