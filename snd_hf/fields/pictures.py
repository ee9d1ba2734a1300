"""Labelled PNG panels of a feature field: renders, components, selections, segments and edits.

Every panel is a row of pictures of one view with a title naming the view (training view or
held-out frame) and a caption above each picture, written by :func:`snd_hf.visualization.save_panel`
after the pictures are enlarged (so the text is drawn at full size, spaces and all). Feature maps
are coloured with one PCA shared by all the views of a call (the same colour is the same feature
everywhere), view-dependent magnitudes in grey with a scale bar, masks as a red overlay, and a
click as a yellow cross wherever its 3D point is in view.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from snd_hf.cameras import Cameras, project_points, unproject_depth
from snd_hf.visualization import fit_pca, save_panel, to_uint8_image

from .field import FeatureField, FieldRender

MASK_COLOR = np.array([255, 40, 40], dtype=np.float32)
MARK_COLOR = np.array([255, 230, 0], dtype=np.uint8)
MARK_RADIUS = 3  # pixels of the field's resolution
SCALE_BAR_HEIGHT = 4  # pixels of the grey ramp under a magnitude picture


def overlay(image: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Image [3, H, W] in [0, 1] with ``mask`` [H, W] tinted red. Returns [H, W, 3] uint8."""
    base = to_uint8_image(image.clamp(0, 1)).astype(np.float32)
    tint = mask.cpu().numpy()[..., None]
    return np.round(np.where(tint, 0.45 * base + 0.55 * MASK_COLOR, base)).astype(np.uint8)


def grey(values: torch.Tensor, high: float | None = None) -> np.ndarray:
    """Non-negative map [H, W] as grey, ``high`` (default: its 99th percentile) as white. [H, W, 3] uint8"""
    values = values.detach().float().cpu()
    high = float(values.flatten().quantile(0.99)) if high is None else high
    unit = (values / max(high, 1e-8)).clamp(0, 1)
    return np.repeat((unit.numpy() * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def with_scale_bar(picture: np.ndarray) -> np.ndarray:
    """A copy of a grey picture [H, W, 3] whose bottom rows are a black-to-white ramp, edged in red
    (its caption gives the value of white), so that the picture keeps its size. [H, W, 3]"""
    picture = picture.copy()
    width = picture.shape[1]
    ramp = np.repeat(np.linspace(0, 255, width).round().astype(np.uint8)[None, :, None], 3, axis=-1)
    picture[-SCALE_BAR_HEIGHT:] = ramp
    picture[-SCALE_BAR_HEIGHT - 1] = MASK_COLOR.astype(np.uint8)
    return picture


def mark(picture: np.ndarray | torch.Tensor, pixel: tuple[float, float] | None) -> np.ndarray:
    """A copy of ``picture`` [H, W, 3] (or [3, H, W] in [0, 1]) with a cross at ``pixel`` = (x, y), if any. [H, W, 3] uint8"""
    picture = to_uint8_image(picture.clamp(0, 1) if isinstance(picture, torch.Tensor) else picture).copy()
    if pixel is None:
        return picture
    height, width = picture.shape[:2]
    x, y = int(pixel[0]), int(pixel[1])
    for offset in range(-MARK_RADIUS, MARK_RADIUS + 1):
        for column, row in ((x + offset, y), (x, y + offset)):
            if 0 <= column < width and 0 <= row < height:
                picture[row, column] = MARK_COLOR
    return picture


def click_in_views(field: FeatureField, cameras: Cameras, view: int, pixel: tuple[int, int]) -> list[tuple[float, float] | None]:
    """Where the 3D point under a click (its rendered depth) appears in every camera: (x, y) in
    pixels, or None where it is behind the camera, outside the image or hidden (rendered depth
    more than 3 % in front of it)."""
    with torch.no_grad():
        out = field.render(cameras, color=False, features=False)
    height, width = cameras.image_size
    x, y = pixel
    depth = torch.zeros(1, height, width, dtype=out.depth.dtype)
    depth[0, y, x] = out.depth[view, 0, y, x]
    point = unproject_depth(depth, cameras.extrinsics[view : view + 1], cameras.intrinsics[view : view + 1])[0, y, x]
    places = []
    for index in range(len(cameras)):
        xy, z = project_points(point[None], cameras.extrinsics[index], cameras.intrinsics[index])
        column, row = float(xy[0, 0]) * width, float(xy[0, 1]) * height
        inside = float(z[0]) > 0 and 0 <= column < width and 0 <= row < height
        seen = inside and float(out.depth[index, 0, int(row), int(column)]) >= 0.97 * float(z[0])
        places.append((column, row) if seen else None)
    return places


def normalised(out: FieldRender) -> FieldRender:
    """Divide every rendered part by the alpha (covered pixels show the Gaussians' own values)."""
    alpha = out.alpha.clamp_min(0.5)

    def scale(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor / alpha

    return FieldRender(
        scale(out.diffuse), scale(out.specular), scale(out.features_ind), scale(out.features_dep), scale(out.extra),
        out.alpha, out.depth,
    )  # fmt: skip


def field_panels(
    field: FeatureField,
    cameras: Cameras,
    out_dir: Path,
    names: list[str],
    titles: list[str],
    images: torch.Tensor | None = None,
    upscale: int = 3,
) -> list[Path]:
    """One panel per camera: [image] | render | diffuse | specular | f_ind | ‖f_dep‖ (features only if distilled).

    Args:
        names: file stem per camera.
        titles: panel title per camera (e.g. "training view 3 (frame_000004)").
        images: the views' photographs, shown first when given. [V, 3, H, W]
    """
    features = field.feature_space is not None
    with torch.no_grad():
        out = normalised(field.render(cameras, features=features))
    if features:
        projection = fit_pca(out.features("ind"))
        dependent = out.features_dep.norm(dim=1)
        high = float(out.features_ind.norm(dim=1).flatten().quantile(0.99))
    specular_high = max(float(out.specular.abs().mean(1).flatten().quantile(0.999)), 0.05)
    paths = []
    for index, name in enumerate(names):
        row = [] if images is None else [to_uint8_image(images[index].clamp(0, 1))]
        labels = [] if images is None else ["image"]
        row += [
            to_uint8_image(out.color("full")[index].clamp(0, 1)),
            to_uint8_image(out.diffuse[index].clamp(0, 1)),
            with_scale_bar(grey(out.specular[index].abs().mean(0), specular_high)),
        ]
        labels += ["render", "diffuse", f"specular, bar 0 to {specular_high:.2f}"]
        if features:
            row += [projection(out.features_ind[index]), with_scale_bar(grey(dependent[index], high))]
            labels += ["f_ind (PCA)", f"|f_dep|, bar 0 to {high:.2g}"]
        path = out_dir / f"{Path(name).stem}.png"
        paths.append(save_panel(row, path, height=cameras.image_size[0] * upscale, title=titles[index], labels=labels))
    return paths
