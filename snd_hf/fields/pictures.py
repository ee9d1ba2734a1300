"""Labelled PNG panels of a feature field: renders, components, selections and edits.

Every panel is a row of captioned pictures of one view, built on :func:`snd_hf.visualization.save_panel`;
feature maps are coloured with one PCA shared by all the views of a call (the same colour is the
same feature everywhere), view-dependent magnitudes in grey, masks as a red overlay.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from snd_hf.visualization import fit_pca, save_panel, to_uint8_image

from .field import FeatureField, FieldRender
from .scene import Cameras

CAPTION_HEIGHT = 12  # pixels of the caption strip above each picture, before upscaling
MASK_COLOR = np.array([255, 40, 40], dtype=np.float32)


def captioned(picture: np.ndarray | torch.Tensor, text: str) -> np.ndarray:
    """A picture with a white caption strip above it. [H, W, 3] → [H + 12, W, 3] uint8"""
    picture = to_uint8_image(picture)
    strip = Image.new("RGB", (picture.shape[1], CAPTION_HEIGHT), (255, 255, 255))
    ImageDraw.Draw(strip).text((1, 0), text, fill=(0, 0, 0))
    return np.concatenate([np.asarray(strip), picture], axis=0)


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
    images: torch.Tensor | None = None,
    upscale: int = 3,
) -> list[Path]:
    """One panel per camera: [image] | render | diffuse | specular | f_ind | ‖f_dep‖ (features only if distilled).

    Args:
        images: the views' photographs, shown first when given. [V, 3, H, W]
    """
    features = field.feature_space is not None
    with torch.no_grad():
        out = normalised(field.render(cameras, features=features))
    height = cameras.image_size[0] * upscale
    if features:
        projection = fit_pca(out.features("ind"))
        dependent = out.features_dep.norm(dim=1)
        high = float(out.features_ind.norm(dim=1).flatten().quantile(0.99))
    specular_high = max(float(out.specular.abs().mean(1).flatten().quantile(0.999)), 0.05)
    paths = []
    for index, name in enumerate(names):
        row = [] if images is None else [captioned(images[index].clamp(0, 1), "image")]
        row += [
            captioned(out.color("full")[index].clamp(0, 1), "render"),
            captioned(out.diffuse[index].clamp(0, 1), "diffuse"),
            captioned(grey(out.specular[index].abs().mean(0), specular_high), "specular"),
        ]
        if features:
            row += [
                captioned(projection(out.features_ind[index]), "f_ind (PCA)"),
                captioned(grey(dependent[index], high), "|f_dep|"),
            ]
        paths.append(save_panel(row, out_dir / f"{Path(name).stem}.png", height=height + CAPTION_HEIGHT * upscale))
    return paths
