"""`snd field`: fit a disentangled feature field to a scene, segment it with a click, edit it.

    snd field fit data/glossy/scenes/synth_0000 --model snd_hf/assets/default --out room.field
    snd field segment room.field --view VIEW --click X,Y --out room-segment
    snd field segment room.field --all --out room-segments
    snd field edit room.field --select VIEW:X,Y --remove-reflections --recolor 0.2,0.5,0.9 --out room-edit

``fit`` writes the field folder (``field.safetensors``, ``field.json``) with ``pictures/``: per
training view and held-out frame (so named in the title) the photograph, the render, its diffuse
and specular colour, ``f_ind`` (PCA colours) and ``‖f_dep‖`` (with a scale bar). ``segment``
writes per training view the render and the 3D selection in red, the click marked where its 3D
point is in view, and the highlight mask; ``--all`` segments everything without a click (one
colour per segment). ``edit`` writes per view the render before and after the edit (and
``--save-field`` the edited field). Views are the field's training views, numbered as in
``field.json``'s ``view_names``; clicks are ``X,Y`` pixel columns and rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from snd_hf.data.frames import decode_image, open_image
from snd_hf.files import sha256_file
from snd_hf.run_folder import RunFolder
from snd_hf.visualization import save_panel

from .field import WEIGHTS_NAME, FeatureField
from .fit import FitConfig, fit_field
from .pictures import click_in_views, field_panels, grey, mark, normalised, overlay
from .scene import load_scene
from .segment import (
    Selection,
    highlight_masks,
    image_click_feature,
    recolor,
    scale_specular,
    segment_everything,
    segment_masks,
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
        titles = [
            f"training view {train.index(v)} ({scene.names[v]})" if v in train else f"held-out frame {scene.names[v]} (not fitted)"
            for v in shown
        ]
        names = [scene.names[v] for v in shown]
        field_panels(field, scene.cameras[shown], folder / "pictures", names, titles, scene.images[shown], UPSCALE)

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


def _select(field: FeatureField, args: argparse.Namespace, view: int | None, click: tuple[int, int]) -> Selection:
    if getattr(args, "image", None) is not None:
        if args.model is None:
            raise ValueError("--image needs --model (the field's teacher reads the feature under the click)")
        if args.method != "threshold":
            raise ValueError("a click on --image has no 3D point to grow a region from; add --method threshold")
        picture = decode_image(open_image(args.image).convert("RGB"), None, str(args.image))
        return select_similar(field, image_click_feature(field, picture, click, args.model), args.threshold)
    if view is None:
        raise ValueError("give --view K (a view of the field) or --image PICTURE with --model")
    return select_by_click(field, view, click, args.threshold, method=args.method)


def _view_title(field: FeatureField, index: int, clicked: int | None = None) -> str:
    name = field.view_names[index] if field.view_names else str(index)
    return f"training view {index} ({name})" + (", clicked here" if index == clicked else "")


def _panel_folder(args: argparse.Namespace, command: str, settings: dict) -> RunFolder:
    """The run folder of ``--out``: panels of another field or selection are never mixed into it."""
    identity = {"field_sha256": sha256_file(args.field / WEIGHTS_NAME), "settings": settings}
    return RunFolder(args.out, command, identity, overwrite=args.overwrite, info={"field": str(args.field)})


def run_segment(args: argparse.Namespace) -> int:
    if args.all == (args.click is not None):
        raise ValueError("give either --click X,Y (with --view or --image) or --all")
    field = _load(args.field)
    with torch.no_grad():
        colors = normalised(field.render(features=False)).color("full").clamp(0, 1)
    height = field.cameras.image_size[0] * UPSCALE
    names = ("view", "click", "all", "image", "method", "threshold", "highlight_ratio")
    settings = {name: str(getattr(args, name)) for name in names}
    if args.all:
        labels = segment_everything(field)
        masks = segment_masks(field, labels)
        palette = torch.rand(int(labels.max()) + 2, 3, generator=torch.Generator().manual_seed(0))
        palette[-1] = 0.0  # -1: no segment, black
        with _panel_folder(args, "snd field segment", settings):
            for index, name in enumerate(field.view_names):
                row = [colors[index], palette[masks[index]].permute(2, 0, 1)]
                save_panel(row, args.out / f"{index:03d}_{Path(name).stem}.png", height=height, title=_view_title(field, index),
                           labels=["render", "segments (black: none)"])  # fmt: skip
        print(f"{int(labels.max()) + 1} segments over {int((labels >= 0).sum())} of {field.num_gaussians} Gaussians; "
              f"{len(field.view_names)} panels in {args.out}")  # fmt: skip
        return 0
    selection = _select(field, args, args.view, args.click)
    masks = selection_masks(field, selection)
    highlights = highlight_masks(field, threshold=args.highlight_ratio) if field.disentangled else None
    places = click_in_views(field, field.cameras, args.view, args.click) if args.image is None else [None] * len(colors)
    with _panel_folder(args, "snd field segment", settings):
        for index, name in enumerate(field.view_names):
            row = [mark(colors[index], places[index]), mark(overlay(colors[index], masks[index]), places[index])]
            labels = ["render, click: yellow cross", f"3D selection ({selection.count} Gaussians)"]
            if highlights is not None:
                row.append(grey(highlights[index].float(), 1.0))
                labels.append("highlights")
            save_panel(row, args.out / f"{index:03d}_{Path(name).stem}.png", height=height,
                       title=_view_title(field, index, args.view), labels=labels)  # fmt: skip
    rule = "region of the neighbour graph" if selection.method == "region" else f"cosine >= {selection.threshold:.2f}"
    print(f"selected {selection.count} of {field.num_gaussians} Gaussians ({rule}); {len(field.view_names)} panels in {args.out}")
    return 0


def run_edit(args: argparse.Namespace) -> int:
    if not (args.remove_reflections or args.specular_scale is not None or args.recolor or args.roughness is not None):
        raise ValueError("nothing to edit: give --remove-reflections, --specular-scale, --recolor and/or --roughness")
    if args.remove_reflections and args.specular_scale is not None:
        raise ValueError("--remove-reflections and --specular-scale both set the specular scale; give one")
    field = _load(args.field)
    view, click = args.select
    selection = _select(field, args, view, click)
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
    places = click_in_views(field, field.cameras, view, click)
    height = field.cameras.image_size[0] * UPSCALE
    names = ("select", "method", "threshold", "remove_reflections", "specular_scale", "recolor", "roughness")
    settings = {name: str(getattr(args, name)) for name in names}
    with _panel_folder(args, "snd field edit", settings):
        for index, name in enumerate(field.view_names):
            row = [
                mark(overlay(before.color("full")[index], masks[index]), places[index]),
                before.color("full")[index].clamp(0, 1),
                after.color("full")[index].clamp(0, 1),
                grey(after.specular[index].abs().mean(0), 0.25),
            ]
            labels = ["selection, click: yellow cross", "before", "after", "specular after (white: 0.25)"]
            save_panel(row, args.out / f"{index:03d}_{Path(name).stem}.png", height=height,
                       title=_view_title(field, index, view), labels=labels)  # fmt: skip
    if args.save_field is not None:
        edited.save(args.save_field)
    print(f"edited {selection.count} Gaussians; {len(field.view_names)} before/after panels in {args.out}")
    return 0

