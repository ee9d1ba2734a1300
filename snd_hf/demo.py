"""`snd demo`: SnD features of a few packaged views of one scene, as files and pictures, in seconds.

    snd demo                        # published weights if the Hub answers, else the embedded checkpoint
    snd demo --model path/or/repo --out my-demo
    snd demo --model my-snd-run --init my-initial-model   # also compare correspondences with the start

With no ``--model`` the published ``david-shavin/SnD`` (``--size``/``--blending``, default small with
blending) is used when the Hub answers within ``--timeout`` seconds or the weights are already
cached; otherwise (offline, unreachable) the checkpoint embedded in ``snd_hf/assets/default/`` is
used: a stand-in, not the published model. It is a tiny ViT 2D-pretrained offline
(``training/pretrain_2d.py``, ``snd_hf/assets/pretrained_2d/``) and then trained by the default
run of ``training/train.py`` (the CPU SnD recipe) on generated rooms. The packaged views are frames
of one generated room that no run trains on (see ``snd_hf/assets/make_assets.py``). The folder
records its model in ``snd_run.json`` (:class:`snd_hf.run_folder.RunFolder`): a demo with another
model replaces the earlier demo's files.

Writes, per view, ``{stem}.safetensors`` and ``{stem}_pca.png`` (as ``snd extract``), and:

- ``panel.png``: every view beside its features, coloured with ONE PCA fitted on all views so that
  the same colour means the same feature across views, titled with the model that made it;
- ``correspondence.png`` (packaged views, with an initial model to compare: the 2D-pretrained
  start of the embedded checkpoint, or ``--init``): feature matches from view 0 to view 1 of the
  initial model (left) and of the SnD model (right), green within 10 px of the true reprojection
  (the packaged ground-truth depth and cameras), red otherwise, with each model's recall.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import httpx
from PIL import Image, ImageDraw

from .eval.correspondence import correspondence_matches
from .extract import (
    extract_to_folder,
    load_model,
    load_processor,
    open_run_folder,
    output_names,
)
from .hub import SND_HUB_REPO
from .images import check_images, load_rgb, rgb_to_float
from .modeling_snd import SnDModel
from .schema import read_json
from .visualization import fit_pca, save_panel, to_uint8_image

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_CHECKPOINT = ASSETS / "default"
INITIAL_CHECKPOINT = ASSETS / "pretrained_2d"  # where the embedded checkpoint's training started
DEMO_IMAGES = ASSETS / "demo"
DEMO_TRUTH = DEMO_IMAGES / "truth"
# The benchmark's held-out rows of the embedded checkpoint's recipe, as benchmarks/bench_snd_effect.py wrote them.
SND_EFFECT = ASSETS / "snd_effect.json"
EMBEDDED = "embedded default checkpoint"
PANEL = "panel.png"
CORRESPONDENCE = "correspondence.png"
EMBEDDED_DESCRIPTION = (
    "the embedded stand-in, NOT the published SnD: a tiny ViT trained offline on generated rooms "
    "(2D self-supervised pre-training, then SnD with the CPU recipe)"
)
MATCH_THRESHOLD_PX = 10.0
SHOWN_MATCHES = 60


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


def describe(name: str, model: SnDModel) -> str:
    """One line saying which model made the pictures."""
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    if name == EMBEDDED:
        return f"{EMBEDDED_DESCRIPTION}; {millions:.2f} M parameters"
    return f"{name} ({millions:.2f} M parameters)"


def run(args: argparse.Namespace) -> int:
    paths = check_images(list(args.images) if args.images else sorted(DEMO_IMAGES.glob("*.png")), args.max_pixels)
    model, name = demo_model(args.model, args.size, args.blending, args.revision, args.timeout)
    processor = load_processor(DEFAULT_CHECKPOINT if name == EMBEDDED else name, args.shortest_edge, args.max_pixels)
    # The correspondence picture needs the packaged views' ground truth and a model to compare with.
    compare = args.images is None and (args.init is not None or name == EMBEDDED)
    # A demo folder follows the model of its latest run: another model's files are replaced, not mixed.
    extra_outputs = [PANEL, CORRESPONDENCE] if compare else [PANEL]
    outputs = [output for path in paths for output in output_names(path.stem)] + extra_outputs
    folder, metadata = open_run_folder(args.out, "snd demo", model, processor, outputs, name, args.overwrite, replace_other_run=True)
    with folder:
        written = list(extract_to_folder(model, processor, paths, args.out, metadata, args.pca_scale, args.batch_size))

        # One projection for all views: [C, sum of h*w, 1] holds every patch of every view.
        maps = [features.feature_map for _, _, features in written]
        projection = fit_pca(torch.cat([feature_map.flatten(1) for feature_map in maps], dim=1)[..., None])
        views = [load_rgb(path, max_pixels=args.max_pixels) for path in paths]  # decoded again: a few views
        columns, labels = [], []
        for path, view, feature_map in zip(paths, views, maps):
            columns += [view, projection(feature_map)]
            labels += [f"image: {path.name}", "features (one PCA, all views)"]
        panel = save_panel(
            columns,
            args.out / PANEL,
            height=maps[0].shape[1] * model.config.patch_size,
            title=f"SnD dense features, coloured by one PCA over all views.\nModel: {describe(name, model)}",
            labels=labels,
        )
        if compare:
            if args.init is not None:
                initial, initial_name = load_model(args.init, None, None, None), str(args.init)
            else:
                initial, initial_name = SnDModel.from_pretrained(INITIAL_CHECKPOINT), "2D-pretrained start (before SnD)"
            matches_picture, recalls = correspondence_picture(
                {initial_name: initial.eval(), "SnD" if name == EMBEDDED else name: model.eval()},
                views[:2],
                args.out / CORRESPONDENCE,
            )

    print(f"model: {name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters)")
    for feature_path, picture, features in written:
        channels, height, width = features.feature_map.shape
        print(f"  {feature_path} ({channels}x{height}x{width})  {picture}")
    print(f"panel (image | features, one PCA for all views): {panel}")

    if compare:
        summary = ", ".join(f"{label} {recall:.2f}" for label, recall in recalls.items())
        print(f"correspondence view0 -> view1 (recall within {MATCH_THRESHOLD_PX:g} px: {summary}): {matches_picture}")
    if name == EMBEDDED:
        print(snd_effect_summary())
    return 0


def snd_effect_summary(path: Path = SND_EFFECT) -> str:
    """The four probes of the embedded checkpoint's recipe against its start, on the benchmark's held-out rooms.

    One line per probe, start → SnD for each training seed, as ``benchmarks/bench_snd_effect.py``
    wrote them (``snd_hf/assets/snd_effect.json``; the full tables: docs/snd_effect.md).
    """
    effect = read_json(path)
    seeds = effect["seeds"]
    probes = [
        ("gap4_R@10", "recall within 10 px, views 4 frames apart (higher is better)", "{:.3f}"),
        ("gap8_R@10", "recall within 10 px, views 8 frames apart (higher is better)", "{:.3f}"),
        ("depth_log_rmse", "depth log-RMSE (lower is better)", "{:.3f}"),
        ("normals_mean_deg", "surface normals mean angle in degrees (lower is better)", "{:.1f}"),
        ("seg_miou", "segmentation mIoU, 6 classes (higher is better)", "{:.3f}"),
    ]
    lines = [
        f"this recipe on {effect['held_out_rooms']} rooms no run trained on, start -> SnD for training seeds "
        f"{' / '.join(seeds)} (benchmarks/bench_snd_effect.py; docs/snd_effect.md):"
    ]
    for key, label, number in probes:
        runs = " / ".join(f"{number.format(rows['init'][key])} -> {number.format(rows['snd'][key])}" for rows in seeds.values())
        lines.append(f"  {label}: {runs}")
    return "\n".join(lines)


def demo_truth(count: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ground truth of the packaged views: z-depth in metres [V, H, W], c2w [V, 4, 4], normalised intrinsics [V, 3, 3]."""
    cameras = read_json(DEMO_TRUTH / "cameras.json")
    depth = [np.asarray(Image.open(DEMO_TRUTH / f"depth{index}.png"), dtype=np.float32) / 1000.0 for index in range(count)]
    extrinsics = torch.tensor(cameras["extrinsics"][:count], dtype=torch.float32)
    intrinsics = torch.tensor(cameras["intrinsics"], dtype=torch.float32).expand(count, 3, 3).clone()
    return torch.from_numpy(np.stack(depth)), extrinsics, intrinsics


@torch.no_grad()
def correspondence_picture(
    models: dict[str, SnDModel], views: list[np.ndarray], path: Path
) -> tuple[Path, dict[str, float]]:
    """Draw each model's matches from view 0 to view 1 of the packaged pair, side by side per model.

    Matching follows :mod:`snd_hf.eval.correspondence` (nearest neighbour, ratio test, 1000 best
    matches) on the grid of the size the last model was trained at (``training_info``; the views'
    own size otherwise), as ``benchmarks/bench_snd_effect.py`` scores it; errors are in pixels of that
    grid. An evenly spread subset of the matches is drawn.

    Returns:
        the picture's path and each model's recall within 10 px.
    """
    depth, extrinsics, intrinsics = demo_truth()
    pixels = torch.stack([torch.from_numpy(rgb_to_float(view)).permute(2, 0, 1) for view in views])  # [2, 3, H, W]
    native = tuple(pixels.shape[-2:])
    size = _training_size(list(models.values())[-1]) or native
    resized = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
    grid_depth = F.interpolate(depth[:, None], size=size, mode="nearest")[:, 0]
    scale = torch.tensor([native[1] / size[1], native[0] / size[0]])

    rows, recalls = [], {}
    for label, model in models.items():
        features = model.image_features(resized).feature_map  # [2, C, h, w]
        matches = correspondence_matches(features, grid_depth, extrinsics, intrinsics)
        correct = matches.errors <= MATCH_THRESHOLD_PX
        recalls[label] = float(correct.float().mean())
        canvas = Image.fromarray(np.concatenate([to_uint8_image(view) for view in pixels], axis=1))
        draw = ImageDraw.Draw(canvas)
        shown = torch.linspace(0, len(correct) - 1, min(SHOWN_MATCHES, len(correct))).round().long().unique()
        for index in shown.tolist():
            start = (matches.xy0[index] * scale).tolist()
            end = (matches.xy1[index] * scale + torch.tensor([native[1], 0.0])).tolist()
            colour = (40, 200, 60) if correct[index] else (230, 40, 40)
            draw.line([tuple(start), tuple(end)], fill=colour, width=1)
            draw.ellipse([start[0] - 1.5, start[1] - 1.5, start[0] + 1.5, start[1] + 1.5], fill=colour)
        rows.append((label, np.asarray(canvas)))
    patch = list(models.values())[-1].config.patch_size
    shown_px = MATCH_THRESHOLD_PX * native[1] / size[1]
    title = (
        f"Matches view 0 -> view 1 (nearest feature, ratio test, {SHOWN_MATCHES} of 1000 shown). The views were resized "
        f"to {size[0]}x{size[1]} px (HxW, the size the model was trained at: {size[0] // patch}x{size[1] // patch} "
        f"patches of {patch} px, features interpolated to every pixel) and matched there. Green: within "
        f"{MATCH_THRESHOLD_PX:g} px of the true reprojection at that size ({shown_px:g} px in the {native[0]}x{native[1]} "
        "views shown); red: farther."
    )
    labels = [f"{label}: recall@{MATCH_THRESHOLD_PX:g}px {recalls[label]:.2f}" for label, _ in rows]
    return save_panel([row for _, row in rows], path, title=title, labels=labels, gap=12), recalls


def _training_size(model: SnDModel) -> tuple[int, int] | None:
    """The image size a native checkpoint was trained at (``config.training_info``), or None."""
    info = model.config.training_info or {}
    size = info.get("config", {}).get("image_size")
    return (int(size[0]), int(size[1])) if size else None
