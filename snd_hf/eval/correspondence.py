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
from dataclasses import dataclass

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

__all__ = ["Matches", "correspondence_errors", "correspondence_matches", "ratio_test_matches", "summarize_correspondence"]

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


@dataclass
class Matches:
    """Feature matches of one image pair and their ground truth, in evaluation-grid pixels.

    Attributes:
        xy0: pixel centres (x, y) of the matched pixels of view 0. [M, 2]
        xy1: pixel centres of their matches in view 1. [M, 2]
        truth: where the view-0 pixels truly project in view 1. [M, 2]
        weight: ratio-test weight ``1 - d1 / d2``, descending. [M]
    """

    xy0: torch.Tensor
    xy1: torch.Tensor
    truth: torch.Tensor
    weight: torch.Tensor

    @property
    def errors(self) -> torch.Tensor:
        """Distance from each match to the true projection, in pixels. [M]"""
        return (self.truth - self.xy1).norm(dim=-1)


def correspondence_matches(
    feature_maps: torch.Tensor,
    depths: torch.Tensor,
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    num_matches: int = 1000,
    stride: int = 1,
) -> Matches:
    """The feature matches of one image pair (see the module docstring) with their ground truth.

    Args:
        feature_maps: dense features of both views at any resolution. [2, C, h, w]
        depths: z-depth of both views on the evaluation grid (quarter scale), 0 = invalid. [2, H, W]
        extrinsics: camera-to-world, OpenCV. [2, 4, 4]
        intrinsics: normalised intrinsics. [2, 3, 3]
        num_matches: matches kept per pair.
        stride: match every ``stride``-th row and column of view 0 (1: every pixel, as Probe3D);
            all of view 1's pixels are candidates either way.

    Returns:
        :class:`Matches` (empty when a view has too few valid pixels).
    """
    if feature_maps.dim() != 4 or feature_maps.shape[0] != 2:
        raise ValueError(f"feature_maps must be [2, C, h, w], got {tuple(feature_maps.shape)}")
    if depths.dim() != 3 or depths.shape[0] != 2:
        raise ValueError(f"depths must be [2, H, W], got {tuple(depths.shape)}")
    height, width = depths.shape[-2:]
    grid = F.interpolate(feature_maps.float(), size=(height, width), mode="bilinear", align_corners=False)
    grid = F.normalize(grid, dim=1)  # [2, C, H, W]
    queries = grid[0, :, ::stride, ::stride].flatten(1).T  # [H'·W', C]
    keys = grid[1].flatten(1).T  # [H·W, C]
    valid0 = (depths[0, ::stride, ::stride] > 0).flatten()
    valid1 = (depths[1] > 0).flatten()
    if int(valid0.sum()) == 0 or int(valid1.sum()) < 2:
        empty = torch.empty(0, 2)
        return Matches(empty, empty, empty, torch.empty(0))
    rows0 = valid0.nonzero().squeeze(1)
    rows1 = valid1.nonzero().squeeze(1)
    index0, index1, weight = ratio_test_matches(queries[rows0], keys[rows1], num_matches)
    # Ground truth for every valid (strided) pixel of view 0, in the same raster order as rows0.
    # Like Probe3D, a match is scored against the true projection even where view 1 sees an occluder.
    truth = correspondences(
        depths[0], depths[1], extrinsics[0], extrinsics[1], intrinsics[0], intrinsics[1], stride=stride
    )
    pixels = pixel_centers(height, width, dtype=truth["xy_b"].dtype) * truth["xy_b"].new_tensor([width, height])
    return Matches(truth["xy_a"][index0], pixels.flatten(0, 1)[rows1[index1]], truth["xy_b"][index0], weight)


def correspondence_errors(
    feature_maps: torch.Tensor,
    depths: torch.Tensor,
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    num_matches: int = 1000,
    stride: int = 1,
) -> torch.Tensor:
    """Reprojection errors of the feature matches of one image pair (:func:`correspondence_matches`).

    Returns:
        error of every kept match in evaluation-grid pixels. [M]
    """
    return correspondence_matches(feature_maps, depths, extrinsics, intrinsics, num_matches, stride).errors


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
