"""Metric functions against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from snd_hf.eval.metrics import (
    SegmentationMeter,
    average_metrics,
    depth_eval_mask,
    depth_metrics,
    normal_metrics,
    recall_at,
    recall_by_rotation,
)


def test_depth_metrics_hand_computed():
    target = torch.tensor([[1.0, 2.0], [4.0, 0.0]])
    prediction = torch.tensor([[1.0, 2.5], [2.0, 7.0]])
    valid = target > 0
    metrics = depth_metrics(prediction, target, valid)
    # Ratios max(p/t, t/p) = 1, 1.25, 2 against 1.25, 1.5625, 1.953.
    assert metrics["d1"] == pytest.approx(1 / 3)
    assert metrics["d2"] == pytest.approx(2 / 3)
    assert metrics["d3"] == pytest.approx(2 / 3)
    assert metrics["abs_rel"] == pytest.approx((0 + 0.5 / 2 + 2 / 4) / 3)
    assert metrics["sq_rel"] == pytest.approx((0 + 0.25 / 2 + 4 / 4) / 3)
    assert metrics["rmse"] == pytest.approx(math.sqrt((0 + 0.25 + 4) / 3))
    logs = [0.0, math.log(1.25), math.log(0.5)]
    assert metrics["rmse_log"] == pytest.approx(math.sqrt(sum(v * v for v in logs) / 3))
    assert metrics["log10"] == pytest.approx(sum(abs(v) for v in logs) / math.log(10) / 3)
    mean = sum(logs) / 3
    assert metrics["silog"] == pytest.approx(100 * math.sqrt(sum(v * v for v in logs) / 3 - mean**2))


def test_depth_metrics_perfect_and_empty():
    target = torch.rand(5, 6) + 0.5
    metrics = depth_metrics(target, target, torch.ones(5, 6, dtype=torch.bool))
    assert metrics["d1"] == 1.0 and metrics["rmse"] == 0.0 and metrics["silog"] == pytest.approx(0.0, abs=1e-6)
    assert all(math.isnan(v) for v in depth_metrics(target, target, torch.zeros(5, 6, dtype=torch.bool)).values())
    with pytest.raises(ValueError, match="share one shape"):
        depth_metrics(target, target[:4], target > 0)


def test_depth_eval_mask_ranges_and_crops():
    depth = torch.full((480, 640), 5.0)
    depth[0, 0] = 0.0
    depth[100, 100] = 12.0
    mask = depth_eval_mask(depth, max_depth=10.0)
    assert mask.sum() == 480 * 640 - 2
    eigen = depth_eval_mask(depth, max_depth=10.0, crop="eigen")
    assert eigen.sum() == (471 - 45) * (601 - 41) - 1 and not eigen[44, 100] and eigen[45, 41]
    garg = depth_eval_mask(torch.ones(100, 200), crop="garg")
    assert garg.sum() == (99 - 40) * (192 - 7) and garg[40, 7] and not garg[39, 7]
    with pytest.raises(ValueError, match="480x640"):
        depth_eval_mask(torch.ones(10, 10), crop="eigen")


def test_normal_metrics_hand_computed():
    target = torch.zeros(3, 1, 3)
    target[2] = 1.0
    prediction = torch.zeros(3, 1, 3)
    prediction[2] = 1.0
    prediction[0, 0, 1] = math.tan(math.radians(20))  # 20° off
    prediction[0, 0, 2] = 1.0  # 45° off
    metrics = normal_metrics(prediction, target, torch.ones(1, 3, dtype=torch.bool))
    assert metrics["mean"] == pytest.approx((0 + 20 + 45) / 3, rel=1e-6)
    assert metrics["rmse"] == pytest.approx(math.sqrt((0 + 400 + 2025) / 3), rel=1e-6)
    assert metrics["recall_11.25"] == pytest.approx(100 / 3)
    assert metrics["recall_22.5"] == pytest.approx(200 / 3)
    assert metrics["recall_30"] == pytest.approx(200 / 3)


def test_average_metrics_skips_nan():
    assert average_metrics([{"a": 1.0, "b": math.nan}, {"a": 3.0, "b": 2.0}]) == {"a": 2.0, "b": 2.0}


def test_segmentation_meter_hand_computed():
    meter = SegmentationMeter(num_classes=3, ignore_index=255)
    target = torch.tensor([[0, 0, 1, 1], [1, 255, 0, 0]])
    prediction = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 0]])
    meter.update(prediction[:1], target[:1])
    meter.update(prediction[1:], target[1:])
    metrics = meter.compute()
    # class 0: inter 3, target 4, pred 4 → IoU 3/5, acc 3/4; class 1: inter 2, target 3, pred 3 → 2/4, 2/3;
    # class 2 never occurs (the ignored pixel's prediction is skipped) → left out.
    assert metrics["miou"] == pytest.approx(100 * (3 / 5 + 2 / 4) / 2)
    assert metrics["macc"] == pytest.approx(100 * (3 / 4 + 2 / 3) / 2)
    assert metrics["aacc"] == pytest.approx(100 * 5 / 7)


def test_recalls():
    errors = torch.tensor([1.0, 6.0, 12.0, 30.0])
    assert recall_at(errors) == {"recall@5px": 0.25, "recall@10px": 0.5, "recall@20px": 0.75}
    binned = recall_by_rotation([1.0, 0.5, 0.2, 0.0, 0.4], [3.0, 14.9, 15.0, 180.0, 60.0])
    assert binned["0-15"] == pytest.approx(0.75)
    assert binned["15-30"] == pytest.approx(0.2)
    assert math.isnan(binned["30-60"])
    assert binned["60-180"] == pytest.approx(0.2)
