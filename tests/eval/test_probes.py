"""Probes on generated scenes: the loss falls and the metric beats a trivial predictor.

Features are derived from the ground truth pooled to a 14-pixel patch grid, so the tests are fast
and deterministic and check the heads, losses and metrics rather than a backbone.
"""

from __future__ import annotations

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
from snd_hf.eval.probe import ProbeConfig
from snd_hf.eval.synthetic import SyntheticFrames, _render_scenes
from snd_hf.eval.tasks import (
    DenseArrays,
    ProbeData,
    run_depth,
    run_normals,
    run_segmentation,
)

PATCH = 8
NUM_CLASSES = 7
CONFIG = ProbeConfig(steps=40, batch_size=4, lr=5e-2, weight_decay=0.0)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    scenes = _render_scenes(tmp_path_factory.mktemp("scenes"), (4, 4, 48, 64), seed=7)

    def arrays(frames: SyntheticFrames, key: str) -> DenseArrays:
        samples = [frames[i] for i in range(len(frames))]
        return DenseArrays(
            images=torch.stack([s.image for s in samples]),
            depth=torch.stack([s.depth for s in samples]),
            normals=torch.stack([s.normals for s in samples]),
            labels=torch.stack([s.labels for s in samples]),
            key=key,
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
