"""Instance-mask operations of the teacher: mask-aware upsampling and segment blending, and their linear maps.

Both are vectorised over every batch dimension, segment and pixel (no Python loop over
segments or pixels). Blending is one ``scatter_add`` of segment sums and one ``gather`` of the
means back to the pixels. Mask-aware upsampling is
plain bilinear wherever a pixel's four neighbours share its label, and one weighted
``embedding_bag`` gather elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Non-negative instance ids below this are used directly as segment indices (no sort).
_DIRECT_IDS = 4096
# Interleaved accumulators per segment for the segment sums (see `_lane_segments`).
_LANES = 8


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
        masks: high-resolution instance ids, any integer dtype (uint8 ... int64). [..., H, W]

    Returns:
        upsampled features. [..., C, H, W]

    Raises:
        TypeError: ``masks`` is a float, bool or complex tensor.
    """
    if features.ndim < 3:
        raise ValueError(f"`features` must have shape [..., C, h, w], got {list(features.shape)}.")
    if masks.shape[:-2] != features.shape[:-3]:
        raise ValueError(
            f"`masks` must have shape {list(features.shape[:-3])} + [H, W] to match `features` "
            f"{list(features.shape)}, got {list(masks.shape)}."
        )
    _check_integer_masks(masks)
    channels, low_height, low_width = features.shape[-3:]
    height, width = masks.shape[-2:]
    batch_shape = features.shape[:-3]
    features = features.reshape(-1, channels, low_height, low_width)
    masks = masks.reshape(-1, height, width)

    neighbour, weights, masked_weights, same = _bilinear_neighbours(masks, low_height, low_width, features.dtype)
    total = masked_weights.sum(1)  # [N, H, W]

    # Where all four neighbours share the pixel's label (most pixels: segment interiors) the
    # result is plain bilinear, which torch computes at memory speed. Only the other pixels
    # are gathered again with renormalised weights.
    # Deviation: no valid neighbour → plain bilinear as well (the original outputs 0).
    upsampled = F.interpolate(
        features.contiguous(memory_format=torch.channels_last), size=(height, width), mode="bilinear", align_corners=True
    )  # [N, C, H, W], channels-last memory
    fix = (~same.all(1)) & (total > 0)  # [N, H, W]
    if fix.any():
        image, y, x = fix.nonzero(as_tuple=True)
        renormalised = masked_weights[image, :, y, x] / total[image, y, x, None]  # [P, 4]
        bags = neighbour[:, y, x].T + (image * (low_height * low_width))[:, None]  # [P, 4]
        table = features.flatten(2).transpose(1, 2).reshape(-1, channels).contiguous()  # [N * h * w, C], rows contiguous
        values = F.embedding_bag(bags, table, per_sample_weights=renormalised, mode="sum")  # [P, C]
        pixels = upsampled.permute(0, 2, 3, 1)  # [N, H, W, C], a view of the channels-last memory
        pixels[image, y, x] = values
    # Channels-last memory: the teacher flattens it to b (v h w) c for free.
    return upsampled.reshape(*batch_shape, channels, height, width)


def mask_aware_upsample_weights(
    masks: torch.Tensor,  # [N, H, W]
    low_size: tuple[int, int],
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear map of :func:`mask_aware_upsample`: four weighted low-resolution neighbours per pixel.

    ``upsampled[n, :, y, x] = Σ_k weights[n, k, y, x] · features[n, :, neighbour[k, y, x]]`` with the
    features flattened to ``h * w`` (row-major).

    Args:
        masks: high-resolution instance ids, integer. [N, H, W]
        low_size: ``(h, w)`` of the features.

    Returns:
        neighbour: flat low-resolution index of each neighbour. [4, H, W]
        weights: the neighbours' weights (plain bilinear, or renormalised over the neighbours
            sharing the pixel's label). [N, 4, H, W]
    """
    neighbour, weights, masked_weights, same = _bilinear_neighbours(masks, *low_size, dtype)
    total = masked_weights.sum(1, keepdim=True)  # [N, 1, H, W]
    fix = (~same.all(1, keepdim=True)) & (total > 0)
    # Deviation: no valid neighbour → plain bilinear (the original outputs 0), as in mask_aware_upsample.
    return neighbour, torch.where(fix, masked_weights / total.clamp_min(1e-30), weights.expand_as(masked_weights))


def _bilinear_neighbours(
    masks: torch.Tensor,  # [N, H, W]
    low_height: int,
    low_width: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align-corners neighbours of every pixel and which of them share its label.

    Returns:
        neighbour [4, H, W] flat low-resolution indices in the order (y0, x0), (y0, x1), (y1, x0),
        (y1, x1); weights [4, H, W] plain bilinear; masked_weights [N, 4, H, W] those of the
        neighbours with the pixel's label (else 0); same [N, 4, H, W] which neighbours share it.
    """
    height, width = masks.shape[-2:]
    ys = _align_corners(low_height, height, masks.device, dtype)
    xs = _align_corners(low_width, width, masks.device, dtype)
    y0, x0 = ys.floor().long(), xs.floor().long()
    y1, x1 = (y0 + 1).clamp_max(low_height - 1), (x0 + 1).clamp_max(low_width - 1)
    wy, wx = ys - y0, xs - x0  # [H], [W]
    row = torch.stack([y0, y0, y1, y1])[:, :, None]  # [4, H, 1]
    column = torch.stack([x0, x1, x0, x1])[:, None, :]  # [4, 1, W]
    weight_y = torch.stack([1 - wy, 1 - wy, wy, wy])[:, :, None]
    weight_x = torch.stack([1 - wx, wx, 1 - wx, wx])[:, None, :]
    weights = weight_y * weight_x  # [4, H, W]
    neighbour = (row * low_width + column).expand(4, height, width)  # flat low-resolution index

    # Label of every low-resolution sample: the high-resolution mask at its grid point.
    sample_rows = _align_corners(height, low_height, masks.device, torch.float64).round().long()
    sample_columns = _align_corners(width, low_width, masks.device, torch.float64).round().long()
    low_labels = masks[:, sample_rows[:, None], sample_columns[None, :]].flatten(1)  # [N, h * w]
    neighbour_labels = low_labels[:, neighbour.flatten()].view(-1, 4, height, width)
    same = neighbour_labels == masks[:, None]  # [N, 4, H, W]
    return neighbour, weights, weights * same, same


def blend_with_mask(
    features: torch.Tensor,  # [B, V, C, H, W]
    masks: torch.Tensor,  # [B, V, Hm, Wm]
    alpha: float,
    weights: torch.Tensor | None = None,  # [B, V, H, W] or [B, V, 1, H, W]
    out: torch.Tensor | None = None,  # [B, V, C, H, W]
) -> torch.Tensor:
    """Blend every pixel's features with the mean features of its instance segment.

    Each pixel becomes ``alpha * f + (1 - alpha) * mean(segment)``; segments are per view (the
    same id in two views is two segments). Masks of another size are resized nearest first.

    Args:
        features: features to blend. [B, V, C, H, W]
        masks: instance ids, any integer dtype (uint8 ... int64; the same ids give the same
            result whatever the dtype). [B, V, Hm, Wm]
        alpha: weight of the pixel's own features (1 = no blending, the original uses 0.5).
        weights: optional per-pixel weights of the segment means, e.g. the rendered alpha, so
            that uncovered pixels do not pull the means towards zero. None reproduces the original
            (plain means over every pixel of the segment). Segments whose weights sum to 0 use the
            plain mean. [B, V, H, W] or [B, V, 1, H, W]
        out: optional tensor to write the result into; may be ``features`` itself, which saves
            allocating (and page-faulting) a second full-resolution buffer. [B, V, C, H, W]

    Returns:
        blended features. [B, V, C, H, W]

    Raises:
        TypeError: ``masks`` is a float, bool or complex tensor.
    """
    if features.ndim != 5:
        raise ValueError(f"`features` must have shape [B, V, C, H, W], got {list(features.shape)}.")
    if masks.ndim != 4 or masks.shape[:2] != features.shape[:2]:
        raise ValueError(
            f"`masks` must have shape [{features.shape[0]}, {features.shape[1]}, Hm, Wm], got {list(masks.shape)}."
        )
    _check_integer_masks(masks)
    batch, views, channels, height, width = features.shape
    if weights is not None:
        weights = weights.reshape(batch, views, -1)
        if weights.shape[-1] != height * width:
            raise ValueError(f"`weights` must have shape [{batch}, {views}, {height}, {width}], got {list(weights.shape)}.")
    if out is not None and (out.shape != features.shape or out.dtype != features.dtype or not out.is_contiguous()):
        raise ValueError(
            f"`out` must be a contiguous {features.dtype} tensor of shape {list(features.shape)}, got "
            f"{out.dtype} {list(out.shape)} (contiguous: {out.is_contiguous()})."
        )
    if alpha == 1.0:
        return features if out is None else out.copy_(features)
    # int64 once, after the resize: gather/scatter index with int64, and torch has no min/max for uint16-64.
    masks = resize_masks(masks, (height, width)).long()

    segment, count = _segment_ids(masks.reshape(batch * views, height * width))
    flat = features.reshape(batch * views, channels, height * width)
    lanes = _lane_segments(segment, count)
    area = _segment_sums(torch.ones_like(flat[:, :1]), lanes, count)  # [B * V, 1, count]
    means = _segment_sums(flat, lanes, count) / area.clamp_min(1.0)
    if weights is not None:
        # Deviation: segment means over covered pixels (weighted by coverage), not over zeros.
        weights = weights.reshape(batch * views, 1, height * width).to(features.dtype)
        mass = _segment_sums(weights, lanes, count)
        means = torch.where(mass > 0, _segment_sums(flat * weights, lanes, count) / mass.clamp_min(1e-12), means)
    # Each pixel's segment mean, then alpha * f + (1 - alpha) * mean: two memory-speed passes.
    segment_means = torch.gather(means, 2, segment[:, None, :].expand(-1, channels, -1))  # [B * V, C, H * W]
    if out is None:
        return segment_means.lerp_(flat, alpha).view_as(features)
    target = out.view(batch * views, channels, height * width)
    if target.data_ptr() != flat.data_ptr():
        target.copy_(flat)
    target.lerp_(segment_means, 1.0 - alpha)
    return out


def segment_mean_weights(
    segments: torch.Tensor,  # [P]
    weights: torch.Tensor | None = None,  # [P]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The segment means of :func:`blend_with_mask` for one view, as two sparse maps.

    ``blend_with_mask(f, ..., alpha, weights)`` is ``alpha · f + (1 − alpha) · membership @ means @ f``
    with ``f`` the view's pixels ``[P, C]``.

    Args:
        segments: instance ids per pixel, integer. [P]
        weights: per-pixel weights of the means (the rendered alpha), or None for plain means. [P]

    Returns:
        means: ``[S, P]`` sparse float64, row s averages segment s's pixels (weighted where its
        weights sum above 0, plain otherwise, as :func:`blend_with_mask` does); membership:
        ``[P, S]`` sparse float64, each pixel's segment. Segments are numbered compactly, S <= P.
    """
    _check_integer_masks(segments)
    _, segment = torch.unique(segments, return_inverse=True)
    count, pixels = int(segment.max()) + 1, torch.arange(segment.numel(), device=segment.device)
    ones = torch.ones_like(segment, dtype=torch.float64)
    area = torch.zeros(count, dtype=torch.float64, device=segment.device).index_add_(0, segment, ones)
    share = 1.0 / area[segment]
    if weights is not None:
        weights = weights.double()
        mass = torch.zeros(count, dtype=torch.float64, device=segment.device).index_add_(0, segment, weights)
        share = torch.where(mass[segment] > 0, weights / mass.clamp_min(1e-12)[segment], share)
    means = torch.sparse_coo_tensor(torch.stack([segment, pixels]), share, (count, segment.numel()), check_invariants=False).coalesce()
    membership = torch.sparse_coo_tensor(torch.stack([pixels, segment]), ones, (segment.numel(), count), check_invariants=False).coalesce()
    return means, membership


def _check_integer_masks(masks: torch.Tensor) -> None:
    """Raise a TypeError unless ``masks`` holds integer ids (any signed or unsigned width)."""
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"`masks` must be a tensor of integer instance ids, got {type(masks).__name__}.")
    if masks.dtype.is_floating_point or masks.dtype.is_complex or masks.dtype == torch.bool:
        raise TypeError(
            f"`masks` must hold integer instance ids (uint8 ... int64), got dtype {masks.dtype}: a float or bool "
            "mask is not a segmentation; convert ids with .long()."
        )


def _lane_segments(segment: torch.Tensor, count: int) -> torch.Tensor:
    """Spread segment ids ``[N, P]`` over ``_LANES`` interleaved accumulators: ``[N, P]`` in ``[0, count * _LANES)``.

    Neighbouring pixels mostly share a segment; summing them into one accumulator serialises the
    adds (``scatter_add`` runs ~4x slower on real masks than on random ids). Pixel ``p`` adds into
    lane ``p % _LANES`` instead, and the lanes are summed afterwards.
    """
    lane = torch.arange(segment.shape[-1], device=segment.device) % _LANES
    return segment + count * lane


def _segment_sums(values: torch.Tensor, lanes: torch.Tensor, count: int) -> torch.Tensor:
    """Per-segment sums of ``values`` ``[N, C, P]`` given lane segment ids ``[N, P]``: ``[N, C, count]``."""
    sums = values.new_zeros(values.shape[0], values.shape[1], count * _LANES)
    sums.scatter_add_(2, lanes[:, None, :].expand(-1, values.shape[1], -1), values)
    return sums.view(values.shape[0], values.shape[1], _LANES, count).sum(2)


def _segment_ids(masks: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Compact segment ids ``[N, P]`` in ``[0, count)`` shared by all rows of ``masks`` ``[N, P]``.

    Small non-negative ids are used as they are (ids absent from a view are empty segments);
    anything else is compacted with a sort (``torch.unique``).
    """
    low, high = int(masks.min()), int(masks.max())
    if low >= 0 and high < _DIRECT_IDS:
        return masks, high + 1
    _, segment = torch.unique(masks, return_inverse=True)
    return segment, int(segment.max()) + 1


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
