"""Pictures of dense features: PCA to RGB, PNG writing and side-by-side panels.

``pca_rgb`` projects a feature map onto its first three principal components and scales each
component robustly (low/high quantiles, clipped) into ``uint8`` colours. A batch of maps shares
one projection, so the same colour means the same feature direction across views; a
``PCAProjection`` fitted on one set of maps can also be reused on others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .files import atomic_write

__all__ = ["PCAProjection", "fit_pca", "pca_rgb", "save_png", "save_panel", "to_uint8_image"]

CAPTION_SIZE = 12  # caption font size in pixels


@dataclass
class PCAProjection:
    """A fitted 3-component PCA with robust per-component colour ranges.

    Attributes:
        mean: Feature mean removed before projecting. [C]
        components: Principal directions as columns, largest variance first. [C, 3]
        low: Per-component value mapped to colour 0. [3]
        high: Per-component value mapped to colour 255. [3]
    """

    mean: torch.Tensor  # [C]
    components: torch.Tensor  # [C, 3]
    low: torch.Tensor  # [3]
    high: torch.Tensor  # [3]

    def __call__(self, features: torch.Tensor) -> np.ndarray:
        """Colour feature maps with this projection.

        Args:
            features: One map or a batch of maps. [C, h, w] or [B, C, h, w]

        Returns:
            ``uint8`` colours. [h, w, 3] or [B, h, w, 3]
        """
        maps = _as_batch(features, self.mean.shape[0])
        batch, channels, height, width = maps.shape
        tokens = maps.permute(0, 2, 3, 1).reshape(-1, channels)  # [B * h * w, C]
        scores = (tokens - self.mean) @ self.components  # [B * h * w, 3]
        span = (self.high - self.low).clamp_min(1e-12)
        unit = ((scores - self.low) / span).clamp(0.0, 1.0)
        rgb = (unit * 255.0).round().to(torch.uint8).reshape(batch, height, width, 3).numpy()
        return rgb[0] if features.dim() == 3 else rgb


def _as_batch(features: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """Check a [C, h, w] / [B, C, h, w] map and return it as float32 [B, C, h, w] on the CPU."""
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() not in (3, 4):
        raise ValueError(f"features must be [C, h, w] or [B, C, h, w], got shape {tuple(features.shape)}")
    maps = features.detach().to("cpu", torch.float32)
    maps = maps.unsqueeze(0) if maps.dim() == 3 else maps
    if channels is not None and maps.shape[1] != channels:
        raise ValueError(f"features must have {channels} channels (the fitted projection), got {maps.shape[1]}")
    return maps


def fit_pca(features: torch.Tensor, quantile: float = 0.01) -> PCAProjection:
    """Fit a 3-component PCA on feature maps, with colour ranges at the given quantiles.

    Component signs are fixed (largest loading positive) so the colours are deterministic. Maps
    with fewer than three channels get zero components for the missing ones.

    Args:
        features: One map or a batch of maps; all pixels of all maps are used. [C, h, w] or [B, C, h, w]
        quantile: Fraction of values clipped at each end of every component, in [0, 0.5).

    Returns:
        The fitted ``PCAProjection``.
    """
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"quantile must be in [0, 0.5), got {quantile}")
    maps = _as_batch(features)
    channels = maps.shape[1]
    tokens = maps.permute(0, 2, 3, 1).reshape(-1, channels).double()  # [N, C]
    mean = tokens.mean(dim=0)
    centred = tokens - mean
    covariance = centred.T @ centred / max(tokens.shape[0] - 1, 1)  # [C, C]
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    components = eigenvectors.flip(-1)[:, :3]  # [C, min(C, 3)]
    # Directions without real variance (rank-deficient maps) would only colour round-off noise.
    informative = eigenvalues.flip(-1)[:3] > 1e-10 * eigenvalues[-1].clamp_min(1e-30)
    components = components * informative
    strongest = components.abs().argmax(dim=0)
    signs = torch.sign(components[strongest, torch.arange(components.shape[1])])
    components = components * torch.where(signs == 0, 1.0, signs)
    if components.shape[1] < 3:
        components = torch.cat([components, components.new_zeros(channels, 3 - components.shape[1])], dim=1)
    scores = centred @ components  # [N, 3]
    low = torch.quantile(scores, quantile, dim=0) if scores.shape[0] > 1 else scores.min(dim=0).values
    high = torch.quantile(scores, 1.0 - quantile, dim=0) if scores.shape[0] > 1 else scores.max(dim=0).values
    return PCAProjection(mean.float(), components.float(), low.float(), high.float())


def pca_rgb(
    features: torch.Tensor, quantile: float = 0.01, projection: PCAProjection | None = None
) -> np.ndarray:
    """Colour feature maps by their first three principal components.

    Args:
        features: One map or a batch of maps sharing one projection. [C, h, w] or [B, C, h, w]
        quantile: Robust scaling: each component's ``quantile`` / ``1 - quantile`` values map to 0 / 255.
        projection: Reuse a projection fitted elsewhere (same C) instead of fitting on ``features``.

    Returns:
        ``uint8`` colours. [h, w, 3] or [B, h, w, 3]
    """
    projection = fit_pca(features, quantile) if projection is None else projection
    return projection(features)


def to_uint8_image(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """Convert an image to ``uint8`` [H, W, 3].

    Args:
        image: ``uint8`` [H, W, 3], or float in [0, 1] as [H, W, 3] or channels-first [3, H, W].

    Returns:
        ``uint8`` [H, W, 3].
    """
    if isinstance(image, torch.Tensor):
        channels_first = image.dim() == 3 and image.shape[0] == 3 and image.shape[-1] != 3
        image = image.detach().cpu()
        image = (image.permute(1, 2, 0) if channels_first else image).numpy()
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[-1] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be [H, W, 3] (or a [3, H, W] tensor), got shape {shape}")
    if image.dtype == np.uint8:
        return image
    return (np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def save_png(image: np.ndarray | torch.Tensor, path: str | os.PathLike, scale: int = 1) -> Path:
    """Write an RGB image as PNG, upscaled ``scale`` times with nearest neighbour (crisp patches).

    Args:
        image: See ``to_uint8_image``. [H, W, 3]
        path: Destination; parent folders are created and the file is written atomically.
        scale: Integer upscaling factor (>= 1).

    Returns:
        The written path.
    """
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    picture = Image.fromarray(to_uint8_image(image))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    atomic_write(path, lambda temporary: picture.save(temporary, format="PNG"))
    return path


def save_panel(
    images: list[np.ndarray | torch.Tensor],
    path: str | os.PathLike,
    height: int | None = None,
    gap: int = 4,
    title: str | None = None,
    labels: list[str] | None = None,
) -> Path:
    """Write images side by side (each resized nearest to a common height) on a white background.

    Args:
        images: RGB images, see ``to_uint8_image``; each [H_i, W_i, 3]
        path: Destination PNG.
        height: Common height; the tallest image's height when None.
        gap: White pixels between images.
        title: Text above the panel, wrapped to its width (``\n`` starts a new line), or None.
        labels: One caption per image, written above it, or None.

    Returns:
        The written path.
    """
    if not images:
        raise ValueError("images must hold at least one image, got an empty list")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"labels must hold one caption per image ({len(images)}), got {len(labels)}")
    pictures = [Image.fromarray(to_uint8_image(image)) for image in images]
    height = max(picture.height for picture in pictures) if height is None else height
    resized = [
        picture.resize((max(1, round(picture.width * height / picture.height)), height), Image.Resampling.NEAREST)
        for picture in pictures
    ]
    width = sum(picture.width for picture in resized) + gap * (len(resized) - 1)
    font = ImageFont.load_default(size=CAPTION_SIZE)
    title_lines = _wrap(title, font, width) if title else []
    line = CAPTION_SIZE + 4
    top = line * len(title_lines) + (line if labels else 0) + (gap if title_lines or labels else 0)
    panel = Image.new("RGB", (width, top + height), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for row, text in enumerate(title_lines):
        draw.text((0, row * line), text, fill=(0, 0, 0), font=font)
    left = 0
    for index, picture in enumerate(resized):
        panel.paste(picture, (left, top))
        if labels:
            caption = _wrap(labels[index], font, picture.width)[0]
            draw.text((left, top - line - gap // 2), caption, fill=(60, 60, 60), font=font)
        left += picture.width + gap
    path = Path(path)
    atomic_write(path, lambda temporary: panel.save(temporary, format="PNG"))
    return path


def _wrap(text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width`` pixels long in ``font`` (a longer word gets its own line)."""
    lines = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}".strip()
            if current and font.getlength(candidate) > width:
                lines.append(current)
                current = word
            else:
                current = candidate
        lines.append(current)
    return lines
