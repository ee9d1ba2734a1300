"""Evaluation metrics of the frozen-feature probes, each following a named reference protocol.

- depth: per image over the scored pixels, then averaged over images. ``protocol="fit3d"`` (default)
  is FiT3D's, i.e. the Monocular-Depth-Estimation-Toolbox's ``calculate`` in
  ``depth/core/evaluation/metrics.py`` as FiT3D's ``evaluation/depth/datasets/nyu.py`` calls it
  (images without a scored pixel are dropped from the average); ``protocol="probe3d"`` is Probe3D's
  ``evaluate_depth`` in ``evals/utils/metrics.py`` (such images count as zeros). Probe3D's
  ``scale_invariant=True`` is ``align_scale_and_shift`` (its ``match_scale_and_shift``);
- surface normals: Probe3D's ``evaluate_surface_norm`` (``evals/utils/metrics.py``): angular RMSE and
  recalls per image, images without a valid pixel count as zeros, then averaged;
- segmentation: mmseg's ``intersect_and_union``/``eval_metrics`` (``mmseg/core/evaluation/metrics.py``):
  areas accumulated over the whole dataset;
- correspondence (Probe3D): recall of matches below pixel thresholds, binned by viewpoint change.

Units: depth errors in the depth unit (metres), δ and correspondence recalls as fractions in
[0, 1], angles in degrees, normal recalls and segmentation scores in percent (as published).
Tables (results.md) show every rate in percent, each column labelled with its unit (``display_unit``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch

__all__ = [
    "DEPTH_METRICS",
    "DepthProtocol",
    "METRICS_REVISION",
    "NORMAL_METRICS",
    "ROTATION_BINS",
    "SegmentationMeter",
    "align_scale_and_shift",
    "average_metrics",
    "depth_eval_mask",
    "depth_metrics",
    "normal_metrics",
    "recall_by_rotation",
    "recall_at",
    "display_unit",
    "format_metric",
]

DEPTH_METRICS = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")
NORMAL_METRICS = ("mean", "rmse", "recall_11.25", "recall_22.5", "recall_30")
# Relative-rotation bins (degrees, [low, high)) of Probe3D's ScanNet pair evaluation; the last is closed.
ROTATION_BINS: tuple[tuple[float, float], ...] = ((0.0, 15.0), (15.0, 30.0), (30.0, 60.0), (60.0, 180.0))
# Whose per-image depth protocol to follow; they differ only for images without a scored pixel.
DepthProtocol = Literal["fit3d", "probe3d"]
# Bumped whenever a metric's definition changes, so that cached probe results are recomputed.
METRICS_REVISION = 3


def display_unit(task: str, metric: str) -> tuple[str, float]:
    """How a table shows ``metric`` of ``task``: its unit and the factor from the stored value (results.json).

    One unit per metric, every rate in percent: δ thresholds (``d1``-``d3``) and correspondence recalls,
    stored as fractions, are multiplied by 100; normal recalls and segmentation scores are percent already.
    Errors keep their unit: ``m`` (the depth unit) for depth ``rmse``/``sq_rel``, ``°`` for normal angles,
    ``×100`` for ``silog`` (100 × the log-space standard deviation, as the Monocular-Depth-Estimation-Toolbox);
    the unitless ``abs_rel``, ``rmse_log`` and ``log10`` have the unit ``""``.

    Returns:
        (unit, factor): show ``factor * value`` under the header ``f"{metric} ({unit})"``.
    """
    if task == "correspondence" or metric in ("d1", "d2", "d3"):
        return "%", 100.0
    if task == "segmentation" or metric.startswith("recall_"):
        return "%", 1.0
    if task == "normals":
        return "°", 1.0
    return {"rmse": "m", "sq_rel": "m", "silog": "×100"}.get(metric, ""), 1.0


def format_metric(task: str, metric: str, value: float) -> str:
    """``value`` (as stored) in its ``display_unit``: 2 decimals for percent and degrees, 4 otherwise; "—" for NaN."""
    if math.isnan(value):
        return "—"
    unit, factor = display_unit(task, metric)
    return f"{value * factor:.2f}" if unit in ("%", "°") else f"{value * factor:.4f}"


def depth_eval_mask(
    depth: torch.Tensor,
    min_depth: float = 1e-3,
    max_depth: float = 10.0,
    crop: Literal["eigen", "garg"] | None = None,
) -> torch.Tensor:
    """Pixels where a depth prediction is scored.

    Valid ground truth is ``min_depth < depth < max_depth``; ``crop="eigen"`` keeps rows 45:471 and
    columns 41:601 (NYUv2, defined on 480x640 images), ``crop="garg"`` keeps rows
    0.40810811 H : 0.99189189 H and columns 0.03594771 W : 0.96405229 W (KITTI).

    Args:
        depth: ground-truth depth, 0 where missing. [..., H, W]
        min_depth: exclusive lower bound of valid depth.
        max_depth: exclusive upper bound of valid depth (the dataset's max depth).
        crop: evaluation crop, or None for the whole image.

    Returns:
        boolean mask. [..., H, W]
    """
    valid = (depth > min_depth) & (depth < max_depth)
    if crop is None:
        return valid
    height, width = depth.shape[-2:]
    region = torch.zeros_like(valid)
    if crop == "eigen":
        if (height, width) != (480, 640):
            raise ValueError(f"the Eigen crop is defined on 480x640 depth maps, got {height}x{width}")
        region[..., 45:471, 41:601] = True
    elif crop == "garg":
        rows = slice(int(0.40810811 * height), int(0.99189189 * height))
        cols = slice(int(0.03594771 * width), int(0.96405229 * width))
        region[..., rows, cols] = True
    else:
        raise ValueError(f"crop must be 'eigen', 'garg' or None, got {crop!r}")
    return valid & region


def depth_metrics(
    prediction: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    protocol: DepthProtocol = "fit3d",
    scale_invariant: bool = False,
) -> dict[str, float]:
    """Depth errors of one image over its scored pixels, on the raw prediction.

    Follows the Monocular-Depth-Estimation-Toolbox ``calculate`` (FiT3D) and Probe3D ``evaluate_depth``:
    ``abs_rel``, ``sq_rel`` and ``rmse`` use the prediction as it is (a non-positive depth is simply a
    large error). δk is the fraction of pixels with ``max(t / p, p / t) < 1.25**k``, with Probe3D's
    ``p.clamp(min=1e-9)`` in ``t / p`` so that non-positive predictions are misses. The log metrics
    (``rmse_log``, ``log10``, SILog ``100 * sqrt(mean(e²) - mean(e)²)`` with ``e = log p - log t``) take
    the logarithm of the raw prediction as the toolbox does: infinite for a zero, NaN for a negative
    depth on a scored pixel, and NaN values are dropped by ``average_metrics`` as the toolbox's
    ``np.nanmean`` drops them.
    Deviation: the toolbox counts a negative prediction as a δ hit (both of its ratios are negative)
    and replaces a NaN SILog by 0 (a perfect score); here the first is a miss (Probe3D) and the
    second stays NaN (docs/deviations.md).

    Args:
        prediction: predicted depth. [H, W]
        target: ground-truth depth. [H, W]
        valid: pixels to score (see ``depth_eval_mask``). [H, W]
        protocol: ``"fit3d"``: an image without a scored pixel gets NaN metrics, dropped by
            ``average_metrics``; ``"probe3d"``: it gets zeros, averaged in.
        scale_invariant: first fit the prediction to the target by least-squares scale and shift
            over the scored pixels (Probe3D's ``scale_invariant=True``; ``align_scale_and_shift``).

    Returns:
        ``DEPTH_METRICS`` → value.

    Raises:
        ValueError: the shapes differ or ``protocol`` is unknown.
    """
    if prediction.shape != target.shape or valid.shape != target.shape:
        raise ValueError(
            f"prediction, target and valid must share one shape, got {tuple(prediction.shape)}, "
            f"{tuple(target.shape)} and {tuple(valid.shape)}"
        )
    empty = _empty_image_value(protocol)
    if not bool(valid.any()):
        return {name: empty for name in DEPTH_METRICS}
    pred = prediction[valid].double()
    gt = target[valid].double()
    if scale_invariant:
        pred = align_scale_and_shift(pred, gt)
    ratio = torch.maximum(gt / pred.clamp_min(1e-9), pred / gt)
    log_error = pred.log() - gt.log()
    values = {
        "d1": (ratio < 1.25).double().mean(),
        "d2": (ratio < 1.25**2).double().mean(),
        "d3": (ratio < 1.25**3).double().mean(),
        "abs_rel": ((gt - pred).abs() / gt).mean(),
        "sq_rel": ((gt - pred) ** 2 / gt).mean(),
        "rmse": ((gt - pred) ** 2).mean().sqrt(),
        "rmse_log": (log_error**2).mean().sqrt(),
        "log10": (gt.log10() - pred.log10()).abs().mean(),
        # clamp: a perfect prediction can round to a tiny negative variance (the toolbox's NaN -> 0).
        "silog": 100.0 * ((log_error**2).mean() - log_error.mean() ** 2).clamp_min(0.0).sqrt(),
    }
    return {name: float(value) for name, value in values.items()}


def align_scale_and_shift(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``s * prediction + t`` with the least-squares scale s and shift t against ``target``.

    Probe3D's ``match_scale_and_shift`` (``evals/utils/metrics.py``, after MiDaS), for one image's
    scored pixels; a constant prediction (a singular system) is returned unchanged, as there.

    Args:
        prediction: predicted depth at the scored pixels. [P]
        target: ground-truth depth at the same pixels. [P]

    Returns:
        the aligned prediction. [P]
    """
    if prediction.numel() == 0 or bool(prediction.max() == prediction.min()):
        return prediction
    centred = prediction - prediction.mean()
    scale = (centred * (target - target.mean())).sum() / (centred * centred).sum()
    return scale * prediction + (target.mean() - scale * prediction.mean())


def normal_metrics(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """Angular errors of one image's surface normals over its valid pixels (Probe3D protocol).

    Probe3D's ``evaluate_surface_norm`` (``evals/utils/metrics.py``): the angle between prediction and
    target (cosine clamped to [-1, 1]), its RMSE and the recalls below 11.25°, 22.5° and 30°. An image
    without a valid pixel scores zeros, which ``average_metrics`` averages in, as Probe3D does.

    Args:
        prediction: predicted normals (any length; normalised here). [3, H, W]
        target: ground-truth unit normals. [3, H, W]
        valid: pixels to score. [H, W]

    Returns:
        ``rmse`` (degrees) and ``recall_<t>`` (percent of valid pixels with error below t degrees).
    """
    if prediction.shape != target.shape or prediction.shape[0] != 3 or valid.shape != target.shape[1:]:
        raise ValueError(
            f"prediction and target must be [3, H, W] and valid [H, W], got {tuple(prediction.shape)}, "
            f"{tuple(target.shape)} and {tuple(valid.shape)}"
        )
    if not bool(valid.any()):
        return {name: 0.0 for name in NORMAL_METRICS}
    cosine = torch.nn.functional.cosine_similarity(prediction.double(), target.double(), dim=0)[valid]
    error = torch.rad2deg(torch.acos(cosine.clamp(-1.0, 1.0)))
    values = {"mean": float(error.mean()), "rmse": float((error**2).mean().sqrt())}
    for threshold in (11.25, 22.5, 30):
        values[f"recall_{threshold}"] = 100.0 * float((error < threshold).double().mean())
    return values


def _empty_image_value(protocol: DepthProtocol) -> float:
    """The score of an image without a scored pixel: NaN (dropped, FiT3D) or 0 (averaged in, Probe3D)."""
    if protocol == "fit3d":
        return math.nan
    if protocol == "probe3d":
        return 0.0
    raise ValueError(f"protocol must be 'fit3d' or 'probe3d', got {protocol!r}")


def average_metrics(per_image: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over images, ignoring NaN (the toolbox's ``np.nanmean``): images without a
    scored pixel under the FiT3D protocol, undefined log metrics, pairs without matches."""
    totals: dict[str, list[float]] = {}
    for metrics in per_image:
        for name, value in metrics.items():
            totals.setdefault(name, []).append(value)
    averaged = {}
    for name, values in totals.items():
        finite = [value for value in values if not math.isnan(value)]
        averaged[name] = sum(finite) / len(finite) if finite else math.nan
    return averaged


class SegmentationMeter:
    """mIoU, mAcc and aAcc as mmseg computes them, accumulated over a dataset.

    mmseg's ``intersect_and_union`` (``mmseg/core/evaluation/metrics.py``): pixels labelled
    ``ignore_index`` are skipped; the per-class areas count only ids in ``[0, num_classes)``, so a
    prediction outside the classes (e.g. 255) is a miss for its pixel's class, and a pixel whose
    ground truth is outside the classes (and not ``ignore_index``) is no class's target but its
    prediction still counts in that class's predicted area. Classes absent from both ground truth and
    predictions have no IoU and are left out of the means (mmseg's NaN-mean).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # [target, prediction]; the extra last row / column collects ids outside the classes.
        self.confusion = torch.zeros(num_classes + 1, num_classes + 1, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of label maps.

        Args:
            prediction: predicted class ids (any integer; outside ``[0, num_classes)`` is a miss). [...]
            target: ground-truth class ids, ``ignore_index`` where unlabelled. [...]
        """
        if prediction.shape != target.shape:
            raise ValueError(f"prediction and target must share one shape, got {tuple(prediction.shape)} and {tuple(target.shape)}")
        keep = target != self.ignore_index
        target, prediction = target[keep].long(), prediction[keep].long()
        outside = self.num_classes
        target = torch.where((target >= 0) & (target < outside), target, outside)
        prediction = torch.where((prediction >= 0) & (prediction < outside), prediction, outside)
        size = self.num_classes + 1
        self.confusion += torch.bincount(target * size + prediction, minlength=size**2).view(size, size)

    def compute(self) -> dict[str, float]:
        """``miou``, ``macc`` and ``aacc`` in percent."""
        classes = self.num_classes
        confusion = self.confusion.double()
        intersection = confusion.diag()[:classes]
        area_target = confusion[:classes].sum(dim=1)
        area_prediction = confusion[:, :classes].sum(dim=0)
        union = area_target + area_prediction - intersection
        iou = intersection / union  # NaN where a class never occurs
        accuracy = intersection / area_target
        return {
            "miou": 100.0 * float(iou.nanmean()),
            "macc": 100.0 * float(accuracy.nanmean()),
            "aacc": 100.0 * float(intersection.sum() / area_target.sum().clamp_min(1)),
        }


def recall_at(errors: torch.Tensor, thresholds: Sequence[float] = (5.0, 10.0, 20.0)) -> dict[str, float]:
    """Fraction of matches whose reprojection error is below each threshold.

    Args:
        errors: per-match error in pixels. [M]
        thresholds: pixel thresholds.

    Returns:
        ``recall@<t>px`` → fraction in [0, 1] (NaN without matches).
    """
    if errors.numel() == 0:
        return {f"recall@{threshold:g}px": math.nan for threshold in thresholds}
    return {f"recall@{threshold:g}px": float((errors < threshold).double().mean()) for threshold in thresholds}


def recall_by_rotation(
    recalls: Sequence[float],
    rotations_deg: Sequence[float],
    bins: Sequence[tuple[float, float]] = ROTATION_BINS,
) -> dict[str, float]:
    """Mean per-pair recall within each relative-rotation bin.

    Args:
        recalls: one recall per image pair. [P]
        rotations_deg: the pair's relative rotation in degrees. [P]
        bins: ``[low, high)`` intervals; the last one includes its upper end.

    Returns:
        ``"<low>-<high>"`` → mean recall of the pairs in that bin (NaN for an empty bin).
    """
    if len(recalls) != len(rotations_deg):
        raise ValueError(f"recalls and rotations_deg must have one entry per pair, got {len(recalls)} and {len(rotations_deg)}")
    binned = {}
    for position, (low, high) in enumerate(bins):
        last = position == len(bins) - 1
        members = [
            recall
            for recall, angle in zip(recalls, rotations_deg)
            if low <= angle < high or (last and angle == high)
        ]
        binned[f"{low:g}-{high:g}"] = sum(members) / len(members) if members else math.nan
    return binned
