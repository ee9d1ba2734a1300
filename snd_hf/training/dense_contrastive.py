"""A purely 2D dense self-supervised objective: two crops of one image, positives from the crop geometry.

The stand-in for DINOv2 that ``training/pretrain_2d.py`` trains (DINOv2 itself is not reachable
offline). Each image gives two random crops (scale, aspect, flip, colour jitter), resized to the
training size. A token of crop A lies at a known point of the source image; its positive is the
token of crop B whose patch holds that point, and every other token of every crop B in the batch
is a negative (InfoNCE, as in dense contrastive learning: DenseCL, Wang et al. 2021; PixPro, Xie
et al. 2021, who also take positives from the crop geometry). No depth, no poses, no second view
of the scene: whatever 3D awareness the features have comes from 2D appearance alone.

Shapes: N images, C channels, (H, W) image and (h, w) token grid of a crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Crops:
    """Crops of a batch of source images and where they came from.

    Attributes:
        images: the crops, resized, colour-jittered. [N, 3, H, W]
        boxes: ``(x0, y0, width, height)`` of each crop in source pixels. [N, 4]
        flipped: whether each crop is mirrored left-right. [N]
    """

    images: torch.Tensor
    boxes: torch.Tensor
    flipped: torch.Tensor


def random_crops(
    images: torch.Tensor,  # [N, 3, Hs, Ws]
    size: tuple[int, int],
    generator: torch.Generator,
    *,
    scale: tuple[float, float] = (0.3, 1.0),
    inside: torch.Tensor | None = None,  # [N, 4]
    jitter: float = 0.3,
) -> Crops:
    """One random crop per image, resized to ``size`` with bilinear sampling.

    Args:
        images: source images in [0, 1]. [N, 3, Hs, Ws]
        size: ``(H, W)`` of the crops.
        generator: the random stream.
        scale: range of the crop area as a fraction of the source image.
        inside: boxes whose area the crop centres must lie in (so that two crops overlap), or None. [N, 4]
        jitter: strength of the brightness, contrast and saturation jitter.

    Returns:
        :class:`Crops`.
    """
    count, _, source_height, source_width = images.shape
    aspect = size[1] / size[0]

    def uniform(low, high):
        return low + (high - low) * torch.rand(count, generator=generator)

    area = uniform(*scale) * source_height * source_width
    ratio = aspect * torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    width = torch.sqrt(area * ratio).clamp(max=source_width)
    height = (width / ratio).clamp(max=source_height)
    if inside is None:
        x0 = uniform(0.0, 1.0) * (source_width - width)
        y0 = uniform(0.0, 1.0) * (source_height - height)
    else:
        centre_x = inside[:, 0] + uniform(0.0, 1.0) * inside[:, 2]
        centre_y = inside[:, 1] + uniform(0.0, 1.0) * inside[:, 3]
        x0 = (centre_x - width / 2).clamp(min=0.0).minimum(source_width - width)
        y0 = (centre_y - height / 2).clamp(min=0.0).minimum(source_height - height)
    flipped = torch.rand(count, generator=generator) < 0.5
    boxes = torch.stack([x0, y0, width, height], dim=-1)

    # Output pixel centres → source normalised coordinates (grid_sample, align_corners=False).
    scale_x = torch.where(flipped, -width, width) / source_width
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = scale_x, (2 * x0 + width) / source_width - 1
    theta[:, 1, 1], theta[:, 1, 2] = height / source_height, (2 * y0 + height) / source_height - 1
    grid = F.affine_grid(theta.to(images.dtype), [count, 3, *size], align_corners=False)
    crops = F.grid_sample(images, grid.to(images.device), mode="bilinear", padding_mode="border", align_corners=False)
    return Crops(_colour_jitter(crops, generator, jitter), boxes, flipped)


def _colour_jitter(images: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """Random brightness, contrast and saturation per image, then clamped to [0, 1]. [N, 3, H, W]"""
    count = images.shape[0]

    def factor():
        return (1.0 + strength * (2 * torch.rand(count, 1, 1, 1, generator=generator) - 1)).to(images)

    grey = images.mean(1, keepdim=True)
    images = grey + (images - grey) * factor()  # saturation
    mean = images.mean((1, 2, 3), keepdim=True)
    images = mean + (images - mean) * factor()  # contrast
    return (images * factor()).clamp(0.0, 1.0)  # brightness


def token_centres(crops: Crops, grid: tuple[int, int]) -> torch.Tensor:
    """Source-pixel position of every token centre of every crop. [N, h·w, 2] as (x, y)"""
    rows, columns = grid
    fraction_y = (torch.arange(rows, dtype=torch.float32) + 0.5) / rows
    fraction_x = (torch.arange(columns, dtype=torch.float32) + 0.5) / columns
    fraction_x = torch.where(crops.flipped[:, None], 1.0 - fraction_x, fraction_x)  # [N, w]
    x = crops.boxes[:, 0, None] + fraction_x * crops.boxes[:, 2, None]  # [N, w]
    y = crops.boxes[:, 1, None] + fraction_y * crops.boxes[:, 3, None]  # [N, h]
    return torch.stack([x[:, None, :].expand(-1, rows, -1), y[:, :, None].expand(-1, -1, columns)], dim=-1).flatten(1, 2)


def positive_tokens(crops_a: Crops, crops_b: Crops, grid: tuple[int, int]) -> torch.Tensor:
    """For every token of crop A, the token of crop B whose patch holds its centre, or -1 if none. [N, h·w]"""
    rows, columns = grid
    centres = token_centres(crops_a, grid)  # [N, h·w, 2]
    boxes = crops_b.boxes[:, None, :]
    fraction_x = (centres[..., 0] - boxes[..., 0]) / boxes[..., 2]
    fraction_x = torch.where(crops_b.flipped[:, None], 1.0 - fraction_x, fraction_x)
    fraction_y = (centres[..., 1] - boxes[..., 1]) / boxes[..., 3]
    inside = (fraction_x >= 0) & (fraction_x < 1) & (fraction_y >= 0) & (fraction_y < 1)
    column = (fraction_x * columns).floor().clamp(0, columns - 1).long()
    row = (fraction_y * rows).floor().clamp(0, rows - 1).long()
    return torch.where(inside, row * columns + column, torch.full_like(row, -1))


class ProjectionHead(nn.Module):
    """The MLP ``C → hidden → out`` (GELU) on each token before the InfoNCE; discarded after pre-training."""

    def __init__(self, in_dim: int, hidden_dim: int = 256, out_dim: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings of tokens [..., C]; returns [..., out]."""
        return F.normalize(self.mlp(tokens), dim=-1)


def dense_info_nce(
    embeddings_a: torch.Tensor,  # [N, h·w, D]
    embeddings_b: torch.Tensor,  # [N, h·w, D]
    positives: torch.Tensor,  # [N, h·w]
    temperature: float = 0.2,
) -> torch.Tensor:
    """InfoNCE of A's tokens against every token of every crop B in the batch.

    Args:
        embeddings_a: L2-normalised token embeddings of crops A. [N, h·w, D]
        embeddings_b: those of crops B. [N, h·w, D]
        positives: index in its own crop B of each A token's positive, -1 for none. [N, h·w]
        temperature: softmax temperature.

    Returns:
        the mean cross-entropy over A tokens that have a positive (0 if none does).
    """
    count, tokens, _ = embeddings_a.shape
    valid = positives >= 0
    if not valid.any():
        return embeddings_a.sum() * 0.0
    queries = embeddings_a[valid]  # [M, D]
    keys = embeddings_b.reshape(count * tokens, -1)  # [N·h·w, D]
    image = torch.arange(count, device=positives.device)[:, None].expand(-1, tokens)[valid]
    labels = image * tokens + positives[valid]
    return F.cross_entropy(queries @ keys.T / temperature, labels)
