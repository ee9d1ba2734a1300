"""Pictures of the evaluation: colour maps for depth, normals and labels, and the recall plot.

Everything is drawn with pillow and numpy (no plotting library); files are written atomically
through ``snd_hf.visualization``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from snd_hf.visualization import save_png

__all__ = ["colorize_depth", "colorize_labels", "colorize_normals", "plot_grouped_bars"]

# Anchor colours of a perceptually ordered map (dark purple → orange → pale yellow), near to far reversed.
_DEPTH_ANCHORS = np.array(
    [[252, 253, 191], [252, 137, 97], [183, 55, 121], [81, 18, 124], [0, 0, 4]], dtype=np.float32
)
_SERIES_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def colorize_depth(depth: torch.Tensor, max_depth: float | None = None) -> np.ndarray:
    """Depth map → ``uint8`` colours, near bright and far dark; missing depth (<= 0) is black.

    Args:
        depth: depth. [H, W]
        max_depth: value mapped to the darkest colour; the largest valid depth when None.

    Returns:
        colours. [H, W, 3]
    """
    depth = depth.detach().float().cpu()
    valid = depth > 0
    top = float(depth[valid].max()) if max_depth is None and bool(valid.any()) else (max_depth or 1.0)
    position = (depth.clamp(0, top) / max(top, 1e-6)).numpy() * (len(_DEPTH_ANCHORS) - 1)
    low = np.floor(position).astype(np.int64).clip(0, len(_DEPTH_ANCHORS) - 2)
    weight = (position - low)[..., None]
    colours = _DEPTH_ANCHORS[low] * (1 - weight) + _DEPTH_ANCHORS[low + 1] * weight
    colours[~valid.numpy()] = 0
    return colours.round().astype(np.uint8)


def colorize_normals(normals: torch.Tensor) -> np.ndarray:
    """Unit normals [3, H, W] → ``uint8`` colours ``(n + 1) / 2`` [H, W, 3]; zero vectors are black."""
    normals = normals.detach().float().cpu()
    colours = ((normals + 1.0) / 2.0).clamp(0, 1).permute(1, 2, 0).numpy()
    colours[normals.norm(dim=0).numpy() < 1e-6] = 0
    return (colours * 255).round().astype(np.uint8)


def colorize_labels(labels: torch.Tensor, ignore_index: int = 255) -> np.ndarray:
    """Class ids [H, W] → fixed pseudo-random colours [H, W, 3]; ``ignore_index`` is black."""
    palette = np.random.default_rng(0).integers(40, 256, size=(256, 3)).astype(np.uint8)
    palette[ignore_index % 256] = 0
    return palette[labels.detach().cpu().numpy().astype(np.int64) % 256]


def plot_grouped_bars(
    values: Mapping[str, Sequence[float]],
    groups: Sequence[str],
    path: str | os.PathLike,
    title: str,
    y_label: str,
    y_max: float = 1.0,
) -> Path:
    """A grouped bar chart: one group per x label, one bar (colour) per series, with a legend.

    Args:
        values: series name → one value per group (NaN draws no bar).
        groups: x-axis labels.
        path: destination PNG.
        title: chart title.
        y_label: y-axis label.
        y_max: top of the y axis.

    Returns:
        the written path.
    """
    width, height, left, right, top, bottom = 640, 400, 60, 20, 40, 60
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    plot_width, plot_height = width - left - right, height - top - bottom
    draw.text((left, 10), title, fill=(0, 0, 0), font=font)
    draw.text((5, top - 15), y_label, fill=(0, 0, 0), font=font)
    for tick in range(6):
        y = top + plot_height * (1 - tick / 5)
        draw.line([(left - 4, y), (left + plot_width, y)], fill=(220, 220, 220))
        draw.text((5, y - 6), f"{y_max * tick / 5:.2f}", fill=(0, 0, 0), font=font)
    draw.line([(left, top), (left, top + plot_height), (left + plot_width, top + plot_height)], fill=(0, 0, 0))
    series = list(values)
    group_width = plot_width / max(1, len(groups))
    bar_width = group_width * 0.8 / max(1, len(series))
    for g, group in enumerate(groups):
        x0 = left + g * group_width + group_width * 0.1
        for s, name in enumerate(series):
            value = values[name][g]
            if value is None or math.isnan(value):
                continue
            y = top + plot_height * (1 - min(max(value / y_max, 0.0), 1.0))
            colour = _SERIES_COLOURS[s % len(_SERIES_COLOURS)]
            draw.rectangle([x0 + s * bar_width, y, x0 + (s + 1) * bar_width - 2, top + plot_height], fill=colour)
        draw.text((x0, top + plot_height + 8), group, fill=(0, 0, 0), font=font)
    for s, name in enumerate(series):
        x, y = left + s * 150, height - 22
        draw.rectangle([x, y, x + 12, y + 12], fill=_SERIES_COLOURS[s % len(_SERIES_COLOURS)])
        draw.text((x + 16, y), name[:20], fill=(0, 0, 0), font=font)
    return save_png(np.asarray(canvas), path)
