"""Our metrics against the reference protocols they claim, re-computed here by independent oracles.

Each oracle restates, in a few lines, what the reference code computes (read from the sources; not
copied): the Monocular-Depth-Estimation-Toolbox ``calculate`` that FiT3D evaluates depth with,
Probe3D's ``evaluate_depth`` / ``match_scale_and_shift`` / ``evaluate_surface_norm``, and mmseg's
``intersect_and_union`` + ``eval_metrics``. Ordinary inputs must agree exactly; edge inputs (empty
images, non-positive depths, labels outside the classes) follow the protocol as documented.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snd_hf.eval.metrics import (
    DEPTH_METRICS,
    SegmentationMeter,
    align_scale_and_shift,
    average_metrics,
    depth_metrics,
    normal_metrics,
)


# --------------------------------------------------------------------------------------------- oracles
def toolbox_depth(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """FiT3D's per-image depth metrics: numpy on the raw masked values; SILog's NaN becomes 0 there."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(gt / pred, pred / gt)
        log_error = np.log(pred) - np.log(gt)
        silog = np.sqrt(np.mean(log_error**2) - np.mean(log_error) ** 2) * 100
        return {
            "d1": (ratio < 1.25).mean(),
            "d2": (ratio < 1.25**2).mean(),
            "d3": (ratio < 1.25**3).mean(),
            "abs_rel": np.mean(np.abs(gt - pred) / gt),
            "sq_rel": np.mean((gt - pred) ** 2 / gt),
            "rmse": np.sqrt(np.mean((gt - pred) ** 2)),
            "rmse_log": np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2)),
            "log10": np.mean(np.abs(np.log10(gt) - np.log10(pred))),
            "silog": 0.0 if np.isnan(silog) else silog,
        }


def probe3d_depth(pred: torch.Tensor, gt: torch.Tensor, scale_invariant: bool = False) -> dict[str, float]:
    """Probe3D over a batch [N, H, W]: valid = gt > 0, per-image means with num_valid clamped to 1."""
    if scale_invariant:
        mask = (gt > 0).double()
        a00, a01, a11 = (mask * pred * pred).sum((1, 2)), (mask * pred).sum((1, 2)), mask.sum((1, 2))
        b0, b1 = (mask * pred * gt).sum((1, 2)), (mask * gt).sum((1, 2))
        det = a00 * a11 - a01 * a01
        scale = torch.where(det != 0, (a11 * b0 - a01 * b1) / det, torch.ones_like(det))
        shift = torch.where(det != 0, (-a01 * b0 + a00 * b1) / det, torch.zeros_like(det))
        pred = pred * scale[:, None, None] + shift[:, None, None]
    valid = (gt > 0).double()
    pred = pred * valid
    count = valid.sum((1, 2)).clamp(min=1)
    ratio = torch.maximum(gt / pred.clamp(min=1e-9), pred / gt.clamp(min=1e-9))
    metrics = {f"d{k}": ((ratio < 1.25**k).double() * valid).sum((1, 2)) / count for k in (1, 2, 3)}
    metrics["rmse"] = (((gt - pred) ** 2 * valid).sum((1, 2)) / count).sqrt()
    return {name: float(value.mean()) for name, value in metrics.items()}


def probe3d_normals(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """Probe3D over a batch [N, 3, H, W] and valid [N, H, W]: recalls as fractions, empty images -> 0."""
    angle = torch.acos(torch.cosine_similarity(pred, gt, dim=1).clamp(-1, 1)) * 180 / torch.pi
    valid = valid.double()
    angle = angle * valid
    count = valid.sum((1, 2)).clamp(min=1)
    metrics = {"rmse": (angle.pow(2).sum((1, 2)) / count).sqrt()}
    for threshold in (11.25, 22.5, 30):
        metrics[f"recall_{threshold}"] = 100 * ((angle < threshold).double() * valid).sum((1, 2)) / count
    return {name: float(value.mean()) for name, value in metrics.items()}


def mmseg_scores(predictions: list[torch.Tensor], targets: list[torch.Tensor], classes: int, ignore: int) -> dict[str, float]:
    """mmseg: per image, drop ignored pixels, histogram intersect/pred/label over [0, classes - 1]; sum."""
    totals = torch.zeros(3, classes, dtype=torch.float64)
    for prediction, target in zip(predictions, targets):
        keep = target != ignore
        prediction, target = prediction[keep].float(), target[keep].float()
        for row, values in enumerate((prediction[prediction == target], prediction, target)):
            totals[row] += torch.histc(values, bins=classes, min=0, max=classes - 1).double()
    intersect, predicted, labelled = totals
    iou = intersect / (predicted + labelled - intersect)
    return {
        "miou": 100 * float(np.nanmean(iou.numpy())),
        "macc": 100 * float(np.nanmean((intersect / labelled).numpy())),
        "aacc": 100 * float(intersect.sum() / labelled.sum()),
    }


# ------------------------------------------------------------------------------------------------ depth
def test_issue_example_rmse_uses_the_raw_prediction():
    target, prediction = torch.tensor([[2.0, 3.0]]), torch.tensor([[2.0, -1.0]])
    for protocol in ("fit3d", "probe3d"):
        metrics = depth_metrics(prediction, target, target > 0, protocol)
        assert metrics["rmse"] == pytest.approx(math.sqrt(8.0))  # 2.828: FiT3D and Probe3D, not 2.121
        assert metrics["abs_rel"] == pytest.approx(4.0 / 3.0 / 2.0) and metrics["sq_rel"] == pytest.approx(16.0 / 3.0 / 2.0)
        assert metrics["d1"] == 0.5  # the negative depth is a miss (Probe3D's clamp in t / p)
    assert probe3d_depth(prediction[None].double(), target[None].double())["rmse"] == pytest.approx(math.sqrt(8.0))
    reference = toolbox_depth(np.array([2.0, 3.0]), np.array([2.0, -1.0]))
    assert reference["rmse"] == pytest.approx(math.sqrt(8.0))


def test_log_metrics_of_non_positive_depths_follow_the_toolbox_logs():
    target = torch.tensor([[2.0, 3.0, 4.0]])
    negative = depth_metrics(torch.tensor([[2.0, -1.0, 4.0]]), target, target > 0)
    assert math.isnan(negative["rmse_log"]) and math.isnan(negative["log10"])  # log of a negative depth
    zero = depth_metrics(torch.tensor([[2.0, 0.0, 4.0]]), target, target > 0)
    assert zero["rmse_log"] == math.inf and zero["log10"] == math.inf  # log(0) = -inf, as numpy
    reference = toolbox_depth(np.array([2.0, 3.0, 4.0]), np.array([2.0, 0.0, 4.0]))
    assert reference["rmse_log"] == math.inf and reference["log10"] == math.inf
    # Deviation: the toolbox turns the undefined SILog into 0 (a perfect score); ours stays NaN and
    # is dropped from the averages like the toolbox's other NaN values.
    assert math.isnan(negative["silog"]) and math.isnan(zero["silog"]) and reference["silog"] == 0.0
    averaged = average_metrics([negative, depth_metrics(target, target, target > 0)])
    assert averaged["silog"] == pytest.approx(0.0, abs=1e-6) and averaged["rmse"] == pytest.approx(math.sqrt(16 / 3) / 2)


def test_ordinary_depth_equals_the_toolbox_per_image_and_probe3d_averaged():
    generator = torch.Generator().manual_seed(0)
    target = 0.5 + 9 * torch.rand(4, 12, 16, generator=generator, dtype=torch.float64)
    target[:, :3] = 0.0  # missing ground truth
    prediction = target * (0.7 + 0.6 * torch.rand(4, 12, 16, generator=generator, dtype=torch.float64))
    valid = target > 0
    per_image = [depth_metrics(prediction[i], target[i], valid[i]) for i in range(4)]
    for i, metrics in enumerate(per_image):
        reference = toolbox_depth(target[i][valid[i]].numpy(), prediction[i][valid[i]].numpy())
        for name in DEPTH_METRICS:
            assert metrics[name] == pytest.approx(reference[name], rel=1e-12, abs=1e-12), name
    ours = average_metrics([depth_metrics(prediction[i], target[i], valid[i], "probe3d") for i in range(4)])
    for name, value in probe3d_depth(prediction, target).items():
        assert ours[name] == pytest.approx(value, rel=1e-12), name


def test_images_without_a_scored_pixel_are_dropped_by_fit3d_and_zeros_for_probe3d():
    generator = torch.Generator().manual_seed(1)
    target = 1 + torch.rand(3, 6, 8, generator=generator, dtype=torch.float64)
    prediction = target + 0.3 * torch.randn(3, 6, 8, generator=generator, dtype=torch.float64)
    target[2] = 0.0  # the third image has no ground truth at all
    valid = target > 0
    dropped = average_metrics([depth_metrics(prediction[i], target[i], valid[i], "fit3d") for i in range(3)])
    averaged_in = average_metrics([depth_metrics(prediction[i], target[i], valid[i], "probe3d") for i in range(3)])
    two = [depth_metrics(prediction[i], target[i], valid[i]) for i in range(2)]
    for name in DEPTH_METRICS:
        assert dropped[name] == pytest.approx((two[0][name] + two[1][name]) / 2), name
        assert averaged_in[name] == pytest.approx((two[0][name] + two[1][name]) / 3), name
    for name, value in probe3d_depth(prediction, target).items():
        assert averaged_in[name] == pytest.approx(value, rel=1e-12), name
    with pytest.raises(ValueError, match="protocol must be 'fit3d' or 'probe3d'"):
        depth_metrics(prediction[0], target[0], valid[0], "nyu")


def test_scale_invariant_depth_is_probe3d_least_squares_scale_and_shift():
    generator = torch.Generator().manual_seed(2)
    target = 1 + 4 * torch.rand(3, 10, 12, generator=generator, dtype=torch.float64)
    target[:, :2] = 0.0
    prediction = 0.3 * target - 0.4 + 0.05 * torch.randn(3, 10, 12, generator=generator, dtype=torch.float64)
    prediction[2] = 2.5  # constant: a singular system, left as it is
    valid = target > 0
    ours = average_metrics([depth_metrics(prediction[i], target[i], valid[i], "probe3d", scale_invariant=True) for i in range(3)])
    for name, value in probe3d_depth(prediction, target, scale_invariant=True).items():
        assert ours[name] == pytest.approx(value, rel=1e-9), name
    # An exact affine prediction aligns to the target exactly.
    aligned = align_scale_and_shift(2 * target[0][valid[0]] + 1, target[0][valid[0]])
    torch.testing.assert_close(aligned, target[0][valid[0]], rtol=1e-12, atol=1e-12)
    assert depth_metrics(2 * target[0] + 1, target[0], valid[0], scale_invariant=True)["rmse"] < 1e-9


# ---------------------------------------------------------------------------------------------- normals
def test_normals_equal_probe3d_with_an_empty_image_averaged_in_as_zeros():
    generator = torch.Generator().manual_seed(3)
    target = torch.nn.functional.normalize(torch.randn(3, 3, 5, 7, generator=generator, dtype=torch.float64), dim=1)
    prediction = target + 0.4 * torch.randn(3, 3, 5, 7, generator=generator, dtype=torch.float64)
    valid = torch.rand(3, 5, 7, generator=generator) > 0.3
    valid[1] = False  # an image without any valid normal
    ours = average_metrics([normal_metrics(prediction[i], target[i], valid[i]) for i in range(3)])
    for name, value in probe3d_normals(prediction, target, valid).items():
        assert ours[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name
    assert normal_metrics(prediction[1], target[1], valid[1]) == {name: 0.0 for name in ours}


# --------------------------------------------------------------------------------------------- segmentation
def test_issue_example_out_of_range_prediction_is_a_miss():
    meter = SegmentationMeter(num_classes=2)
    meter.update(torch.tensor([0, 255]), torch.tensor([0, 1]))
    assert meter.compute()["miou"] == pytest.approx(50.0)  # was 100: 255 was clamped into class 1
    assert mmseg_scores([torch.tensor([0, 255])], [torch.tensor([0, 1])], 2, 255)["miou"] == pytest.approx(50.0)


def test_segmentation_equals_mmseg_with_labels_outside_the_classes():
    generator = torch.Generator().manual_seed(4)
    classes, ignore = 5, 255
    values = torch.tensor([0, 1, 2, 3, 4, 5, 7, -1, 255])  # ids outside [0, 5) on both sides
    predictions, targets = [], []
    meter = SegmentationMeter(classes, ignore)
    for _ in range(3):
        target = values[torch.randint(0, len(values), (9, 11), generator=generator)]
        prediction = torch.where(
            torch.rand(9, 11, generator=generator) < 0.6, target, values[torch.randint(0, len(values), (9, 11), generator=generator)]
        )
        meter.update(prediction, target)
        predictions.append(prediction)
        targets.append(target)
    ours, reference = meter.compute(), mmseg_scores(predictions, targets, classes, ignore)
    for name, value in reference.items():
        assert ours[name] == pytest.approx(value, rel=1e-12), name


def test_ground_truth_outside_the_classes_still_counts_its_prediction():
    meter = SegmentationMeter(num_classes=3, ignore_index=255)
    # Pixel 2 has ground truth 9 (no class, not ignored): it is nobody's target, but its prediction
    # (class 1) enlarges class 1's predicted area, as in mmseg.
    meter.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 9]))
    metrics = meter.compute()
    assert metrics["miou"] == pytest.approx(100 * (1 + 1 / 2) / 2)
    assert metrics["aacc"] == pytest.approx(100.0) and metrics["macc"] == pytest.approx(100.0)
