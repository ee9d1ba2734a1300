"""Instance-mask operations of the teacher: mask-aware upsampling and segment blending.

Both are vectorised over every batch dimension, segment and pixel (no Python loop over
segments or pixels): segment sums are one ``scatter_add`` and mask-aware upsampling is one
weighted ``embedding_bag`` gather of every pixel's four neighbours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Up to this many segments, segment means are spread back to the pixels by a one-hot matmul.
_ONE_HOT_SEGMENTS = 128


def mask_aware_upsample(
    features: torch.Tensor,  # [..., C, h, w]
    masks: torch.Tensor,  # [..., H, W]
) -> torch.Tensor:
    """Bilinear upsampling that does not mix features across instance segments.

    The grid is align-corners (low-resolution sample ``(p, q)`` sits on the high-resolution
    pixel ``(round(p (H-1)/(h-1)), round(q (W-1)/(w-1)))``, whose mask label it takes). Each of a
    pixel's four bilinear neighbours counts only if its label equals the pixel's label, and the
    remaining weights are renormalised.

    Deviation: where no neighbour with a positive weight shares the pixel's label, the original
    outputs 0; we output the plain bilinear value instead (docs/deviations.md).

    The result is a channels-last view (``movedim``), ready to flatten to ``(H W) C``.

    Args:
        features: low-resolution features. [..., C, h, w]
        masks: high-resolution instance ids, integer. [..., H, W]

    Returns:
        upsampled features. [..., C, H, W]
    """
    if features.ndim < 3:
        raise ValueError(f"`features` must have shape [..., C, h, w], got {list(features.shape)}.")
    if masks.shape[:-2] != features.shape[:-3]:
        raise ValueError(
            f"`masks` must have shape {list(features.shape[:-3])} + [H, W] to match `features` "
            f"{list(features.shape)}, got {list(masks.shape)}."
        )
    if masks.dtype.is_floating_point or masks.dtype == torch.bool:
        raise TypeError(f"`masks` must hold integer instance ids, got dtype {masks.dtype}.")
    channels, low_height, low_width = features.shape[-3:]
    height, width = masks.shape[-2:]
    batch_shape = features.shape[:-3]
    features = features.reshape(-1, channels, low_height, low_width)
    masks = masks.reshape(-1, height, width)

    # Align-corners sampling positions and the four neighbours of every high-resolution pixel.
    ys = _align_corners(low_height, height, features.device, features.dtype)
    xs = _align_corners(low_width, width, features.device, features.dtype)
    y0, x0 = ys.floor().long(), xs.floor().long()
    y1, x1 = (y0 + 1).clamp_max(low_height - 1), (x0 + 1).clamp_max(low_width - 1)
    wy, wx = ys - y0, xs - x0  # [H], [W]
    # Neighbour order: (y0, x0), (y0, x1), (y1, x0), (y1, x1).
    row = torch.stack([y0, y0, y1, y1])[:, :, None]  # [4, H, 1]
    column = torch.stack([x0, x1, x0, x1])[:, None, :]  # [4, 1, W]
    weight_y = torch.stack([1 - wy, 1 - wy, wy, wy])[:, :, None]
    weight_x = torch.stack([1 - wx, wx, 1 - wx, wx])[:, None, :]
    weights = weight_y * weight_x  # [4, H, W]
    neighbour = (row * low_width + column).expand(4, height, width)  # flat low-resolution index

    # Label of every low-resolution sample: the high-resolution mask at its grid point.
    sample_rows = _align_corners(height, low_height, features.device, torch.float64).round().long()
    sample_columns = _align_corners(width, low_width, features.device, torch.float64).round().long()
    low_labels = masks[:, sample_rows[:, None], sample_columns[None, :]].flatten(1)  # [N, h * w]
    neighbour_labels = low_labels[:, neighbour.flatten()].view(-1, 4, height, width)
    same = neighbour_labels == masks[:, None]  # [N, 4, H, W]

    masked_weights = weights * same  # [N, 4, H, W]
    total = masked_weights.sum(1, keepdim=True)
    # Deviation: no valid neighbour → plain bilinear weights (the original outputs 0).
    weights = torch.where(total > 0, masked_weights / total.clamp_min(1e-12), weights)

    # One fused weighted gather of the four neighbour rows per pixel, channels last.
    images = features.shape[0]
    table = features.flatten(2).transpose(1, 2).reshape(-1, channels)  # [N * h * w, C]
    offsets = torch.arange(images, device=features.device)[:, None, None, None] * (low_height * low_width)
    bags = (neighbour + offsets).permute(0, 2, 3, 1).reshape(-1, 4)  # [N * H * W, 4]
    upsampled = F.embedding_bag(
        bags, table, per_sample_weights=weights.permute(0, 2, 3, 1).reshape(-1, 4), mode="sum"
    )  # [N * H * W, C]
    # Channels-last memory: [..., C, H, W] is a view (the teacher flattens it to b (v h w) c for free).
    return upsampled.view(*batch_shape, height, width, channels).movedim(-1, -3)


def blend_with_mask(
    features: torch.Tensor,  # [B, V, C, H, W]
    masks: torch.Tensor,  # [B, V, Hm, Wm]
    alpha: float,
    weights: torch.Tensor | None = None,  # [B, V, H, W] or [B, V, 1, H, W]
) -> torch.Tensor:
    """Blend every pixel's features with the mean features of its instance segment.

    Each pixel becomes ``alpha * f + (1 - alpha) * mean(segment)``; segments are per view (the
    same id in two views is two segments). Masks of another size are resized nearest first.

    Args:
        features: features to blend. [B, V, C, H, W]
        masks: instance ids, integer. [B, V, Hm, Wm]
        alpha: weight of the pixel's own features (1 = no blending, the original uses 0.5).
        weights: optional per-pixel weights of the segment means, e.g. the rendered alpha, so
            that uncovered pixels do not pull the means towards zero. None reproduces the original
            (plain means over every pixel of the segment). Segments whose weights sum to 0 use the
            plain mean. [B, V, H, W] or [B, V, 1, H, W]

    Returns:
        blended features. [B, V, C, H, W]
    """
    if features.ndim != 5:
        raise ValueError(f"`features` must have shape [B, V, C, H, W], got {list(features.shape)}.")
    if masks.ndim != 4 or masks.shape[:2] != features.shape[:2]:
        raise ValueError(
            f"`masks` must have shape [{features.shape[0]}, {features.shape[1]}, Hm, Wm], got {list(masks.shape)}."
        )
    if masks.dtype.is_floating_point or masks.dtype == torch.bool:
        raise TypeError(f"`masks` must hold integer instance ids, got dtype {masks.dtype}.")
    batch, views, channels, height, width = features.shape
    if weights is not None:
        weights = weights.reshape(batch, views, -1)
        if weights.shape[-1] != height * width:
            raise ValueError(f"`weights` must have shape [{batch}, {views}, {height}, {width}], got {list(weights.shape)}.")
    if alpha == 1.0:
        return features
    masks = resize_masks(masks, (height, width))

    # Compact segment ids shared by all views; every view gets its own sums.
    _, segment = torch.unique(masks.reshape(batch * views, height * width), return_inverse=True)
    count = int(segment.max()) + 1
    flat = features.reshape(batch * views, channels, height * width)
    index = segment[:, None, :].expand(-1, channels, -1)
    ones = torch.ones_like(segment, dtype=features.dtype)
    area = torch.zeros(batch * views, count, dtype=features.dtype, device=features.device).scatter_add_(1, segment, ones)
    sums = flat.new_zeros(batch * views, channels, count).scatter_add_(2, index, flat)
    means = sums / area.clamp_min(1.0)[:, None, :]
    if weights is not None:
        # Deviation: segment means over covered pixels (weighted by coverage), not over zeros.
        weights = weights.reshape(batch * views, height * width).to(features.dtype)
        mass = torch.zeros_like(area).scatter_add_(1, segment, weights)
        weighted = flat.new_zeros(batch * views, channels, count).scatter_add_(2, index, flat * weights[:, None, :])
        means = torch.where(mass[:, None, :] > 0, weighted / mass.clamp_min(1e-12)[:, None, :], means)
    if count <= _ONE_HOT_SEGMENTS:
        # alpha * f + (1 - alpha) * means @ one_hot: one fused pass over the features.
        one_hot = flat.new_zeros(batch * views, count, height * width).scatter_(1, segment[:, None, :], 1.0)
        blended = torch.baddbmm(flat, means, one_hot, beta=alpha, alpha=1.0 - alpha)
    else:
        blended = torch.lerp(torch.gather(means, 2, index), flat, alpha)
    return blended.reshape(batch, views, channels, height, width)


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize of integer masks ``[..., Hm, Wm]`` to ``size`` (torch's "nearest" indexing)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    rows = _nearest(masks.shape[-2], size[0], masks.device)
    columns = _nearest(masks.shape[-1], size[1], masks.device)
    return masks[..., rows[:, None], columns[None, :]]


def _nearest(source: int, target: int, device: torch.device) -> torch.Tensor:
    """Source indices of F.interpolate(mode="nearest"): floor(i * source / target)."""
    scale = source / target
    return (torch.arange(target, device=device, dtype=torch.float32) * scale).floor().long().clamp_max(source - 1)


def _align_corners(source: int, target: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Positions in a ``source`` grid of ``target`` align-corners samples (a linspace over [0, source - 1])."""
    return torch.linspace(0, source - 1, target, device=device, dtype=dtype)
