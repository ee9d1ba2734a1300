"""`snd field`: fit a disentangled feature field to a scene, segment it with a click, edit it.

    snd field fit data/glossy/scenes/synth_0000 --model snd_hf/assets/default --out room.field
    snd field segment room.field --view 3 --click 64,50 --out room-segment
    snd field edit room.field --select 3:64,50 --remove-reflections --recolor 0.2,0.5,0.9 --out room-edit

``fit`` writes the field folder (``field.safetensors``, ``field.json``) with ``pictures/``: per view
the photograph, the render, its diffuse and specular colour, ``f_ind`` (PCA colours) and ``‖f_dep‖``.
``segment`` writes per view the render with the 3D selection in red and the highlight mask.
``edit`` writes per view the render before and after the edit (and ``--save-field`` the edited field).
Views are numbered as in ``field.json``'s ``view_names``; clicks are ``X,Y`` pixel columns and rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from snd_hf.data.frames import decode_image, open_image
from snd_hf.files import sha256_file
from snd_hf.run_folder import RunFolder
from snd_hf.visualization import save_panel

from .field import MIN_SH_DEGREE, WEIGHTS_NAME, FeatureField
from .fit import FitConfig, fit_field
from .pictures import CAPTION_HEIGHT, captioned, field_panels, grey, normalised, overlay
from .scene import load_scene
from .segment import (
    Selection,
    highlight_masks,
    image_click_feature,
    recolor,
    scale_specular,
    select_by_click,
    select_similar,
    selection_masks,
    set_roughness,
)

UPSCALE = 3  # pictures are drawn at 3x the field's resolution

def run(args: argparse.Namespace) -> int:
    return {"fit": run_fit, "segment": run_segment, "edit": run_edit}[args.field_command](args)


def run_fit(args: argparse.Namespace) -> int:
    if args.hold_out < 0:
        raise ValueError(f"--hold-out must be >= 0, got {args.hold_out}")
    scene = load_scene(args.scene, size=args.size)
    views = range(len(scene))
    train = [view for view in views if args.hold_out < 2 or view % args.hold_out != args.hold_out // 2]
    held = [view for view in views if view not in train]
    config = FitConfig(
        seed=args.seed, sh_degree=args.sh_degree, feature_dim=args.feature_dim, init_views=args.init_views,
        init_stride=args.init_stride, appearance_steps=args.appearance_steps, feature_steps=args.feature_steps,
    )  # fmt: skip
    field = fit_field(scene, args.model, config, train_views=train, disentangled=not args.single, device=_device(args.device))
    field.info["held_out_views"] = held

    def pictures(folder: Path) -> None:
        shown = sorted(set(train[:: max(1, len(train) // 3)][:3] + held[:2]))
        field_panels(field, scene.cameras[shown], folder / "pictures", [scene.names[v] for v in shown], scene.images[shown])

    path = field.save(args.out, extra=pictures)
    print(f"wrote {path}: {field.num_gaussians} Gaussians, {field.feature_dim} feature channels, "
          f"{len(train)} views fitted ({len(held)} held out), pictures in {path / 'pictures'}")  # fmt: skip
    return 0


def _device(name: str) -> str:
    """``--device``: ``auto`` is cuda when a GPU is available, else cpu."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _load(path: Path) -> FeatureField:
    field = FeatureField.load(path)
    if field.cameras is None or field.feature_space is None:
        raise ValueError(f"{path} holds no cameras or no features; fit it with `snd field fit`")
    return field


def _select(field: FeatureField, view: int | None, click: tuple[int, int], threshold: float, image=None, model=None) -> Selection:
    if image is not None:
        if model is None:
            raise ValueError("--image needs --model (the field's teacher reads the feature under the click)")
        picture = decode_image(open_image(image).convert("RGB"), None, str(image))
        return select_similar(field, image_click_feature(field, picture, click, model), threshold)
    if view is None:
        raise ValueError("give --view K (a view of the field) or --image PICTURE with --model")
    return select_by_click(field, view, click, threshold)


def _panel_folder(args: argparse.Namespace, command: str, settings: dict) -> RunFolder:
    """The run folder of ``--out``: panels of another field or selection are never mixed into it."""
    identity = {"field_sha256": sha256_file(args.field / WEIGHTS_NAME), "settings": settings}
    return RunFolder(args.out, command, identity, overwrite=args.overwrite, info={"field": str(args.field)})


def run_segment(args: argparse.Namespace) -> int:
    field = _load(args.field)
    selection = _select(field, args.view, args.click, args.threshold, args.image, args.model)
    masks = selection_masks(field, selection)
    highlights = highlight_masks(field, threshold=args.highlight_ratio) if field.disentangled else None
    with torch.no_grad():
        colors = normalised(field.render(features=False)).color("full").clamp(0, 1)
    height = (field.cameras.image_size[0] + CAPTION_HEIGHT) * UPSCALE
    settings = {name: str(getattr(args, name)) for name in ("view", "click", "image", "threshold", "highlight_ratio")}
    with _panel_folder(args, "snd field segment", settings):
        for index, name in enumerate(field.view_names):
            row = [captioned(colors[index], f"view {index}"), captioned(overlay(colors[index], masks[index]), "3D selection")]
            if highlights is not None:
                row.append(captioned(grey(highlights[index].float(), 1.0), "highlights"))
            save_panel(row, args.out / f"{index:03d}_{Path(name).stem}.png", height=height)
    print(f"selected {selection.count} of {field.num_gaussians} Gaussians (cosine >= {selection.threshold:.2f}); "
          f"{len(field.view_names)} panels in {args.out}")  # fmt: skip
    return 0


def run_edit(args: argparse.Namespace) -> int:
    if not (args.remove_reflections or args.specular_scale is not None or args.recolor or args.roughness is not None):
        raise ValueError("nothing to edit: give --remove-reflections, --specular-scale, --recolor and/or --roughness")
    if args.remove_reflections and args.specular_scale is not None:
        raise ValueError("--remove-reflections and --specular-scale both set the specular scale; give one")
    field = _load(args.field)
    view, click = args.select
    selection = _select(field, view, click, args.threshold)
    edited = field
    if args.remove_reflections or args.specular_scale is not None:
        edited = scale_specular(edited, selection, 0.0 if args.remove_reflections else args.specular_scale)
    if args.recolor:
        edited = recolor(edited, selection, args.recolor)
    if args.roughness is not None:
        edited = set_roughness(edited, selection, args.roughness)
    with torch.no_grad():
        before = normalised(field.render(features=False))
        after = normalised(edited.render(features=False))
    masks = selection_masks(field, selection)
    height = (field.cameras.image_size[0] + CAPTION_HEIGHT) * UPSCALE
    settings = {name: str(getattr(args, name)) for name in ("select", "threshold", "remove_reflections", "specular_scale", "recolor", "roughness")}
    with _panel_folder(args, "snd field edit", settings):
        for index, name in enumerate(field.view_names):
            row = [
                captioned(overlay(before.color("full")[index], masks[index]), "selection"),
                captioned(before.color("full")[index].clamp(0, 1), "before"),
                captioned(after.color("full")[index].clamp(0, 1), "after"),
                captioned(grey(after.specular[index].abs().mean(0), 0.25), "specular after"),
            ]
            save_panel(row, args.out / f"{index:03d}_{Path(name).stem}.png", height=height)
    if args.save_field is not None:
        edited.save(args.save_field)
    print(f"edited {selection.count} Gaussians; {len(field.view_names)} before/after panels in {args.out}")
    return 0

