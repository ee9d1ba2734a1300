"""One probing task on in-memory data: train the head on frozen features, score it on the test set.

Deviation: the heads train on features of whole images extracted once, without the mmseg
augmentations or slide inference of the original probes (docs/deviations.md, 14).

Each ``run_*`` function takes the train / test ground truth as tensors and the features of one
model (``DenseFeatures``), and returns the dataset-level metrics plus the predictions of the
first test images (for the qualitative panels).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from snd_hf.eval.correspondence import correspondence_errors, summarize_correspondence
from snd_hf.eval.datasets import IGNORE_INDEX
from snd_hf.eval.depth import DepthProbe, depth_probe_loss
from snd_hf.eval.features import DenseFeatures
from snd_hf.eval.metrics import (
    DepthProtocol,
    SegmentationMeter,
    average_metrics,
    depth_eval_mask,
    depth_metrics,
    normal_metrics,
)
from snd_hf.eval.normals import NormalProbe, normal_uncertainty_loss
from snd_hf.eval.probe import ProbeConfig, train_probe
from snd_hf.eval.segmentation import SegmentationProbe, segmentation_loss

__all__ = ["DenseArrays", "ProbeData", "TaskResult", "run_correspondence", "run_depth", "run_normals", "run_segmentation"]


@dataclass
class DenseArrays:
    """One split of a dense dataset held in memory.

    Attributes:
        images: RGB in [0, 1]. [N, 3, H, W]
        depth: metres, 0 = missing. [N, H, W]
        normals: camera-frame unit normals, 0 = missing. [N, 3, H, W]
        labels: class ids, 255 = ignored. [N, H, W]
        key: identifies the images (dataset, split, size) in the feature cache.
    """

    images: torch.Tensor
    depth: torch.Tensor | None = None
    normals: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    key: str = ""

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class ProbeData:
    """Train and test splits of one probing task with one model's features of their images."""

    train: DenseArrays
    train_features: DenseFeatures
    test: DenseArrays
    test_features: DenseFeatures


@dataclass
class TaskResult:
    """Metrics of one model on one task, the training-loss curve and the first predictions."""

    metrics: dict[str, float]
    losses: list[float] = field(default_factory=list)
    predictions: list[torch.Tensor] = field(default_factory=list)


def _predict_in_batches(predict, num_samples: int, batch_size: int) -> list[torch.Tensor]:
    with torch.no_grad():
        return [predict(torch.arange(start, min(start + batch_size, num_samples))) for start in range(0, num_samples, batch_size)]


def _seeded(config: ProbeConfig) -> None:
    torch.manual_seed(config.seed)


def run_depth(
    data: ProbeData,
    config: ProbeConfig,
    min_depth: float,
    max_depth: float,
    crop: str | None = None,
    num_predictions: int = 3,
    protocol: DepthProtocol = "fit3d",
    scale_invariant: bool = False,
) -> TaskResult:
    """Depth probe: train on ``data.train``, per-image metrics on ``data.test`` averaged.

    ``protocol`` ("fit3d" drops test images without a scored pixel, "probe3d" counts them as zeros) and
    ``scale_invariant`` (Probe3D's least-squares scale-and-shift alignment per image before the
    metrics) are passed to ``depth_metrics``.
    """
    _seeded(config)
    probe = DepthProbe(data.train_features.patch.shape[1], data.train_features.cls.shape[1], min_depth, max_depth)

    def batch_loss(indices: torch.Tensor, step: int) -> torch.Tensor:
        prediction = probe(data.train_features.patch[indices], data.train_features.cls[indices])
        return depth_probe_loss(prediction, data.train.depth[indices], max_depth, warm_up=step < config.loss_warmup_steps)

    losses = train_probe(probe, batch_loss, len(data.train), config, "depth probe")

    def predict(indices: torch.Tensor) -> torch.Tensor:
        prediction = probe(data.test_features.patch[indices], data.test_features.cls[indices])
        return F.interpolate(prediction[:, None], size=data.test.depth.shape[-2:], mode="bilinear", align_corners=False)[:, 0]

    predictions = torch.cat(_predict_in_batches(predict, len(data.test), config.batch_size))
    valid = depth_eval_mask(data.test.depth, min_depth, max_depth, crop)
    per_image = [
        depth_metrics(predictions[i], data.test.depth[i], valid[i], protocol, scale_invariant) for i in range(len(data.test))
    ]
    return TaskResult(average_metrics(per_image), losses, list(predictions[:num_predictions]))


def run_normals(
    data: ProbeData,
    config: ProbeConfig,
    num_predictions: int = 3,
) -> TaskResult:
    """Surface-normal probe on pre-norm tokens; per-image angular metrics averaged."""
    _seeded(config)
    probe = NormalProbe(data.train_features.prenorm.shape[1])

    def batch_loss(indices: torch.Tensor, step: int) -> torch.Tensor:
        normals, kappa = probe(data.train_features.prenorm[indices])
        target = data.train.normals[indices]
        return normal_uncertainty_loss(normals, kappa, target, target.norm(dim=1) > 0.5)

    losses = train_probe(probe, batch_loss, len(data.train), config, "normal probe")

    def predict(indices: torch.Tensor) -> torch.Tensor:
        normals, _ = probe(data.test_features.prenorm[indices])
        normals = F.interpolate(normals, size=data.test.normals.shape[-2:], mode="bilinear", align_corners=False)
        return F.normalize(normals, dim=1)

    predictions = torch.cat(_predict_in_batches(predict, len(data.test), config.batch_size))
    valid = data.test.normals.norm(dim=1) > 0.5
    per_image = [normal_metrics(predictions[i], data.test.normals[i], valid[i]) for i in range(len(data.test))]
    return TaskResult(average_metrics(per_image), losses, list(predictions[:num_predictions]))


def run_segmentation(
    data: ProbeData,
    config: ProbeConfig,
    num_classes: int,
    num_predictions: int = 3,
) -> TaskResult:
    """Linear segmentation probe; mIoU / mAcc / aAcc over the whole test set."""
    _seeded(config)
    probe = SegmentationProbe(data.train_features.patch.shape[1], num_classes)
    size = tuple(data.train.labels.shape[-2:])

    def batch_loss(indices: torch.Tensor, step: int) -> torch.Tensor:
        return segmentation_loss(probe(data.train_features.patch[indices], size), data.train.labels[indices], IGNORE_INDEX)

    losses = train_probe(probe, batch_loss, len(data.train), config, "segmentation probe")
    meter = SegmentationMeter(num_classes, IGNORE_INDEX)

    def predict(indices: torch.Tensor) -> torch.Tensor:
        prediction = probe(data.test_features.patch[indices], tuple(data.test.labels.shape[-2:])).argmax(dim=1)
        meter.update(prediction, data.test.labels[indices])
        return prediction

    predictions = torch.cat(_predict_in_batches(predict, len(data.test), config.batch_size))
    return TaskResult(meter.compute(), losses, list(predictions[:num_predictions]))


def run_correspondence(
    pair_features: list[torch.Tensor],
    pair_depths: list[torch.Tensor],
    pair_extrinsics: list[torch.Tensor],
    pair_intrinsics: list[torch.Tensor],
    rotations_deg: list[float],
    num_matches: int = 1000,
) -> TaskResult:
    """Training-free correspondence over image pairs (see ``snd_hf.eval.correspondence``).

    Args:
        pair_features: per pair, the dense features of both views. P × [2, C, h, w]
        pair_depths: per pair, depth on the evaluation (quarter-scale) grid. P × [2, H, W]
        pair_extrinsics: per pair, camera-to-world. P × [2, 4, 4]
        pair_intrinsics: per pair, normalised intrinsics. P × [2, 3, 3]
        rotations_deg: per pair, the relative rotation. [P]
        num_matches: matches kept per pair.
    """
    errors = [
        correspondence_errors(features, depths, extrinsics, intrinsics, num_matches)
        for features, depths, extrinsics, intrinsics in zip(pair_features, pair_depths, pair_extrinsics, pair_intrinsics)
    ]
    return TaskResult(summarize_correspondence(errors, rotations_deg))
