"""Probes on generated scenes: the loss falls, the metric beats a trivial predictor, segmentation
scores only real classes as mmseg does, the stopping rule and cross-validation keep rooms apart,
and the thread count does not change a score.

Features are derived from the ground truth pooled to a 14-pixel patch grid, so the tests are fast
and deterministic and check the heads, losses and metrics rather than a backbone.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from snd_hf.eval.depth import DepthProbe, depth_probe_loss, gradient_loss, sig_loss
from snd_hf.eval.features import DenseFeatures
from snd_hf.eval.metrics import (
    SegmentationMeter,
    average_metrics,
    depth_eval_mask,
    depth_metrics,
    normal_metrics,
)
from snd_hf.eval.normals import NormalProbe, normal_uncertainty_loss
from snd_hf.eval.probe import ProbeConfig, stopping_split, train_probe
from snd_hf.eval.synthetic import SEGMENTATION_CLASSES, SyntheticFrames, _render_scenes
from snd_hf.eval.tasks import (
    DenseArrays,
    ProbeData,
    TaskResult,
    cross_validate,
    run_depth,
    run_normals,
    run_segmentation,
)

PATCH = 8
NUM_CLASSES = len(SEGMENTATION_CLASSES)  # 6: "unlabelled" is not a class
CONFIG = ProbeConfig(steps=40, batch_size=4, lr=5e-2, weight_decay=0.0)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return _render_scenes(tmp_path_factory.mktemp("scenes"), (4, 4, 48, 64), seed=7)


@pytest.fixture(scope="module")
def splits(scenes):
    def arrays(frames: SyntheticFrames, key: str) -> DenseArrays:
        samples = [frames[i] for i in range(len(frames))]
        return DenseArrays(
            images=torch.stack([s.image for s in samples]),
            depth=torch.stack([s.depth for s in samples]),
            normals=torch.stack([s.normals for s in samples]),
            labels=torch.stack([s.labels for s in samples]),
            key=key,
            groups=frames.groups,
        )

    return arrays(SyntheticFrames(scenes[:3]), "train"), arrays(SyntheticFrames(scenes[3:]), "test")


def _ground_truth_features(arrays: DenseArrays) -> DenseFeatures:
    """Pooled depth (RBF-encoded), normals and class histogram on a PATCH-pixel grid."""
    depth = F.avg_pool2d(arrays.depth[:, None], PATCH)  # [N, 1, h, w]
    centres = torch.linspace(1.0, 7.0, 12)[None, :, None, None]
    depth_code = torch.exp(-((depth - centres) ** 2) / 0.5)
    normals = F.avg_pool2d(arrays.normals, PATCH)
    labels = arrays.labels.clamp_max(NUM_CLASSES)  # ignored pixels → an extra bin
    histogram = F.avg_pool2d(F.one_hot(labels, NUM_CLASSES + 1).permute(0, 3, 1, 2).float(), PATCH)
    patch = torch.cat([depth_code, normals, histogram], dim=1)
    return DenseFeatures(patch=patch, cls=patch.mean(dim=(2, 3)), prenorm=patch)


def _probe_data(train: DenseArrays, test: DenseArrays) -> ProbeData:
    return ProbeData(train, _ground_truth_features(train), test, _ground_truth_features(test))


def test_depth_probe_beats_mean_depth(splits):
    train, test = splits
    result = run_depth(_probe_data(train, test), CONFIG, 1e-3, 10.0)
    assert sum(result.losses[-10:]) < 0.8 * sum(result.losses[:10])
    mean_depth = float(train.depth[train.depth > 0].mean())
    valid = depth_eval_mask(test.depth, 1e-3, 10.0)
    trivial = average_metrics(
        [depth_metrics(torch.full_like(test.depth[i], mean_depth), test.depth[i], valid[i]) for i in range(len(test))]
    )
    assert result.metrics["rmse"] < 0.7 * trivial["rmse"]
    assert result.metrics["d1"] > trivial["d1"]
    assert result.predictions[0].shape == test.depth.shape[1:]


def test_normal_probe_beats_mean_normal(splits):
    train, test = splits
    result = run_normals(_probe_data(train, test), CONFIG)
    assert sum(result.losses[-10:]) < sum(result.losses[:10])
    mean_normal = F.normalize(train.normals.mean(dim=(0, 2, 3)), dim=0)
    valid = test.normals.norm(dim=1) > 0.5
    trivial = average_metrics(
        [
            normal_metrics(mean_normal[:, None, None].expand_as(test.normals[i]), test.normals[i], valid[i])
            for i in range(len(test))
        ]
    )
    assert result.metrics["rmse"] < 0.7 * trivial["rmse"]
    assert result.metrics["recall_30"] > trivial["recall_30"]


def test_segmentation_probe_beats_majority_class(splits):
    train, test = splits
    result = run_segmentation(_probe_data(train, test), CONFIG, NUM_CLASSES)
    assert sum(result.losses[-10:]) < 0.5 * sum(result.losses[:10])
    labelled = train.labels[train.labels != 255]
    majority = int(torch.bincount(labelled).argmax())
    meter = SegmentationMeter(NUM_CLASSES)
    meter.update(torch.full_like(test.labels, majority), test.labels)
    trivial = meter.compute()
    assert result.metrics["miou"] > trivial["miou"] + 20
    assert result.metrics["aacc"] > trivial["aacc"]


def test_depth_probe_output_is_within_bins_and_shape():
    probe = DepthProbe(channels=5, cls_channels=3, min_depth=0.5, max_depth=4.0, num_bins=16)
    with torch.no_grad():
        depth = probe(torch.randn(2, 5, 3, 4), torch.randn(2, 3))
    assert depth.shape == (2, 12, 16)
    assert float(depth.min()) >= 0.5 and float(depth.max()) <= 4.0
    with pytest.raises(ValueError, match="cls_token"):
        probe(torch.randn(2, 5, 3, 4))


def test_depth_losses_hand_computed():
    target = torch.full((1, 4, 4), 2.0)
    prediction = target * 1.5
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    # A constant log ratio has no variance: SigLoss = sqrt(0.15) |log ratio|, no gradient loss.
    ratio = torch.log(torch.tensor(3.0 + 1e-3)) - torch.log(torch.tensor(2.0 + 1e-3))
    assert float(sig_loss(prediction, target, valid)) == pytest.approx(float(0.15**0.5 * ratio), rel=1e-5)
    assert float(gradient_loss(prediction, target, valid)) == pytest.approx(0.0, abs=1e-6)
    bumped = prediction.clone()
    bumped[0, 0, 0] = 6.0
    assert float(gradient_loss(bumped, target, valid)) > 0
    assert float(depth_probe_loss(prediction[:, :2, :2], target, max_depth=10.0)) > 0  # resized to the target


def test_normal_loss_prefers_confident_correct_predictions():
    target = F.normalize(torch.randn(1, 3, 4, 4), dim=1)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    near = F.normalize(target + 0.05 * torch.randn(1, 3, 4, 4), dim=1)
    far = F.normalize(target + 2.0 * torch.randn(1, 3, 4, 4), dim=1)
    confident, unsure = torch.full((1, 4, 4), 20.0), torch.full((1, 4, 4), 1.0)
    assert normal_uncertainty_loss(near, confident, target, valid) < normal_uncertainty_loss(near, unsure, target, valid)
    assert normal_uncertainty_loss(far, unsure, target, valid) < normal_uncertainty_loss(far, confident, target, valid)
    with torch.no_grad():
        normals, kappa = NormalProbe(8)(torch.randn(2, 8, 3, 5))
    assert normals.shape == (2, 3, 12, 20) and kappa.shape == (2, 12, 20)
    torch.testing.assert_close(normals.norm(dim=1), torch.ones(2, 12, 20))
    assert float(kappa.min()) > 0


def _mmseg_miou(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> float:
    """mmseg 1.2.2's IoUMetric, rewritten here from its definition (mmseg imports mmcv, which is not installed):
    per image ``intersect_and_union`` (ignored pixels dropped, torch.histc of intersection, prediction
    and label over [0, num_classes - 1]), areas summed over images, then ``total_area_to_metrics``:
    IoU = intersection / union per class, and the mean over classes with np.nanmean."""
    totals = torch.zeros(3, num_classes, dtype=torch.float64)
    for prediction, label in zip(predictions, labels):
        keep = label != ignore_index
        prediction, label = prediction[keep].double(), label[keep].double()
        intersect = prediction[prediction == label]
        histogram = [torch.histc(values, bins=num_classes, min=0, max=num_classes - 1) for values in (intersect, prediction, label)]
        totals += torch.stack(histogram).double()
    intersection, area_prediction, area_label = totals
    iou = (intersection / (area_prediction + area_label - intersection)).numpy()
    return float(np.nanmean(iou))


def test_synthetic_labels_reduce_the_zero_label_as_mmseg(scenes, splits):
    train, _ = splits
    semantic = torch.stack([scene["semantic"][frame] for scene in scenes[:3] for frame in range(4)])
    # mmseg's LoadAnnotations(reduce_zero_label=True): 0 -> 255, c -> c - 1.
    expected = torch.where(semantic == 0, 255, semantic - 1)
    assert torch.equal(train.labels.long(), expected)
    assert set(train.labels.unique().tolist()) <= set(range(NUM_CLASSES)) | {255}


def test_segmentation_probe_never_scores_an_ignored_class_and_matches_mmseg(splits):
    train, test = splits
    # Unlabelled (ignored) pixels in the test split: the generated rooms rarely show any.
    labels = test.labels.clone()
    labels[:, :6] = 255
    test = dataclasses.replace(test, labels=labels)
    result = run_segmentation(_probe_data(train, test), CONFIG, NUM_CLASSES, num_predictions=len(test))
    predictions = torch.stack(result.predictions)
    # One output per real class: a prediction can never be the ignored class.
    assert predictions.min() >= 0 and predictions.max() < NUM_CLASSES
    assert result.metrics["miou"] == pytest.approx(100 * _mmseg_miou(predictions, test.labels, NUM_CLASSES), abs=1e-9)
    # A real class absent from the test ground truth: IoU 0 when predicted (it counts), NaN when not (left out).
    labels = torch.tensor([[0, 0, 1, 255]])
    for prediction in (torch.tensor([[0, 2, 1, 1]]), torch.tensor([[0, 0, 1, 2]])):
        meter = SegmentationMeter(3)
        meter.update(prediction, labels)
        assert meter.compute()["miou"] == pytest.approx(100 * _mmseg_miou(prediction, labels, 3), abs=1e-9)


def test_probe_scores_do_not_depend_on_the_thread_count(splits):
    train, test = splits
    data = _probe_data(train, test)
    generator = torch.Generator().manual_seed(0)
    for features in (data.train_features, data.test_features):  # not separable: the heads have work to do
        features.patch.add_(torch.randn(features.patch.shape, generator=generator))
    config = ProbeConfig(steps=60, batch_size=4, lr=2e-2, weight_decay=0.0, patience=2, eval_every=10)
    threads = torch.get_num_threads()
    scores = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            results = [run_depth(data, config, 1e-3, 10.0), run_normals(data, config), run_segmentation(data, config, NUM_CLASSES)]
            scores.append([(result.metrics, result.probe_steps) for result in results])
    finally:
        torch.set_num_threads(threads)
    assert scores[0] == scores[1]


def test_stopping_rule_keeps_the_best_head_and_sets_whole_rooms_aside():
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    config = ProbeConfig(steps=100, batch_size=2, lr=0.1, patience=2, eval_every=1, validation_fraction=0.25)
    fit, held = stopping_split(8, groups, config)
    assert held.tolist() == [6, 7] and fit.tolist() == [0, 1, 2, 3, 4, 5]  # the last of 4 rooms, whole
    assert stopping_split(8, groups, ProbeConfig())[1].numel() == 0  # no stopping rule: nothing set aside

    probe = torch.nn.Linear(1, 1, bias=False)
    scripted = iter([3.0, 2.0, 1.0, 1.5, 1.2, 0.5])  # best after step 3, then two worse measurements
    weights = []

    def validation_loss() -> float:
        weights.append(probe.weight.item())
        return next(scripted)

    result = train_probe(probe, lambda indices, step: (probe.weight - 5.0).pow(2).sum(), 4, config, validation_loss=validation_loss)
    assert result.best_step == 3 and len(result.losses) == 5
    assert [step for step, _ in result.validation] == [1, 2, 3, 4, 5]
    assert probe.weight.item() == weights[2]  # the head of step 3 is kept


def test_cross_validation_tests_every_room_once():
    groups = torch.arange(8).repeat_interleave(2)
    arrays = DenseArrays(images=groups.float()[:, None, None, None].expand(16, 3, 2, 2), key="x", groups=groups)
    features = DenseFeatures(patch=torch.zeros(16, 1, 1, 1), cls=torch.zeros(16, 1), prenorm=torch.zeros(16, 1, 1, 1))
    seen = []

    def run(data: ProbeData) -> TaskResult:
        train_rooms, test_rooms = set(data.train.groups.tolist()), set(data.test.groups.tolist())
        assert not train_rooms & test_rooms and train_rooms | test_rooms == set(range(8))
        seen.extend(sorted(test_rooms))
        return TaskResult({"room": float(data.test.groups.double().mean())}, probe_steps=1)

    summary = cross_validate(run, arrays, features, folds=4)
    assert seen == list(range(8))
    assert summary["room"]["folds"] == [0.5, 2.5, 4.5, 6.5]
    assert summary["room"]["mean"] == pytest.approx(3.5) and summary["room"]["std"] == pytest.approx(5**0.5)
    with pytest.raises(ValueError, match="folds must be between 2 and the number of rooms"):
        cross_validate(run, arrays, features, folds=9)
