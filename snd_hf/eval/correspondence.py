"""Training-free geometric correspondence (Probe3D's ScanNet pair protocol).

Dense features of two views are resized to the quarter-resolution grid, sampled at the pixels
with valid depth and L2-normalised. Every pixel of view 0 is matched to its nearest neighbour in
view 1; the match is weighted by Lowe's ratio ``1 - d1 / d2`` and the ``num_matches`` best
weighted matches are kept (one direction). A match is scored by the distance, in
quarter-resolution pixels, between the matched pixel in view 1 and the true reprojection of the
view-0 pixel (its depth unprojected and projected with the ground-truth cameras).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from snd_hf.cameras import pixel_centers
from snd_hf.data.correspondence import correspondences
from snd_hf.eval.metrics import (
    ROTATION_BINS,
    average_metrics,
    recall_at,
    recall_by_rotation,
)

__all__ = ["correspondence_errors", "ratio_test_matches", "summarize_correspondence"]

THRESHOLDS_PX = (5.0, 10.0, 20.0)


def ratio_test_matches(
    features0: torch.Tensor, features1: torch.Tensor, num_matches: int = 1000, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest-neighbour matches from view 0 to view 1, ranked by the ratio-test weight.

    Args:
        features0: L2-normalised features of view 0. [N0, C]
        features1: L2-normalised features of view 1 (at least two). [N1, C]
        num_matches: matches to keep (fewer when N0 is smaller).
        chunk: rows of the distance matrix computed at once (bounds memory).

    Returns:
        index0: matched rows of ``features0``. [M]
        index1: their nearest neighbours in ``features1``. [M]
        weight: ``1 - d1 / d2``, descending. [M]
    """
    if features0.dim() != 2 or features1.dim() != 2 or features0.shape[1] != features1.shape[1]:
        raise ValueError(f"features must be [N0, C] and [N1, C], got {tuple(features0.shape)} and {tuple(features1.shape)}")
    if features1.shape[0] < 2:
        raise ValueError(f"features1 needs at least 2 rows for the ratio test, got {features1.shape[0]}")
    nearest, weights = [], []
    for start in range(0, features0.shape[0], chunk):
        distances = torch.cdist(features0[start : start + chunk], features1)  # [n, N1]
        top = distances.topk(2, dim=1, largest=False)
        nearest.append(top.indices[:, 0])
        weights.append(1.0 - top.values[:, 0] / top.values[:, 1].clamp_min(1e-12))
    nearest_all, weight_all = torch.cat(nearest), torch.cat(weights)
    weight, index0 = weight_all.topk(min(num_matches, weight_all.numel()))
    return index0, nearest_all[index0], weight


def correspondence_errors(
    feature_maps: torch.Tensor,
    depths: torch.Tensor,
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    num_matches: int = 1000,
) -> torch.Tensor:
    """Reprojection errors of the feature matches of one image pair.

    Args:
        feature_maps: dense features of both views at any resolution. [2, C, h, w]
        depths: z-depth of both views on the evaluation grid (quarter scale), 0 = invalid. [2, H, W]
        extrinsics: camera-to-world, OpenCV. [2, 4, 4]
        intrinsics: normalised intrinsics. [2, 3, 3]
        num_matches: matches kept per pair.

    Returns:
        error of every kept match in evaluation-grid pixels. [M]
    """
    if feature_maps.dim() != 4 or feature_maps.shape[0] != 2:
        raise ValueError(f"feature_maps must be [2, C, h, w], got {tuple(feature_maps.shape)}")
    if depths.dim() != 3 or depths.shape[0] != 2:
        raise ValueError(f"depths must be [2, H, W], got {tuple(depths.shape)}")
    height, width = depths.shape[-2:]
    grid = F.interpolate(feature_maps.float(), size=(height, width), mode="bilinear", align_corners=False)
    grid = F.normalize(grid, dim=1).flatten(2).transpose(1, 2)  # [2, H·W, C]
    valid = (depths > 0).flatten(1)  # [2, H·W]
    if int(valid[0].sum()) == 0 or int(valid[1].sum()) < 2:
        return torch.empty(0)
    rows0 = valid[0].nonzero().squeeze(1)
    rows1 = valid[1].nonzero().squeeze(1)
    index0, index1, _ = ratio_test_matches(grid[0, rows0], grid[1, rows1], num_matches)
    # Ground truth for every valid pixel of view 0, in the same raster order as rows0. Like
    # Probe3D, a match is scored against the true projection even where view 1 sees an occluder.
    truth = correspondences(depths[0], depths[1], extrinsics[0], extrinsics[1], intrinsics[0], intrinsics[1])
    pixels = pixel_centers(height, width, dtype=truth["xy_b"].dtype) * truth["xy_b"].new_tensor([width, height])
    return (truth["xy_b"][index0] - pixels.flatten(0, 1)[rows1[index1]]).norm(dim=-1)


def summarize_correspondence(
    errors: Sequence[torch.Tensor],
    rotations_deg: Sequence[float],
    thresholds: Sequence[float] = THRESHOLDS_PX,
    bins: Sequence[tuple[float, float]] = ROTATION_BINS,
) -> dict[str, float]:
    """Per-pair recalls averaged over pairs, plus recall@10px binned by relative rotation.

    Args:
        errors: per pair, the error of each match in pixels. P × [M]
        rotations_deg: relative rotation of each pair in degrees. [P]

    Returns:
        ``recall@<t>px`` and ``recall@10px_<low>-<high>deg`` (fractions in [0, 1]).
    """
    per_pair = [recall_at(pair_errors, thresholds) for pair_errors in errors]
    summary = average_metrics(per_pair)
    binned = recall_by_rotation([recalls["recall@10px"] for recalls in per_pair], rotations_deg, bins)
    summary.update({f"recall@10px_{name}deg": value for name, value in binned.items()})
    return summary
