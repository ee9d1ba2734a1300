"""One probing task on in-memory data: train the head on frozen features, score it on the test set.

Deviation: the heads train on features of whole images extracted once, without the mmseg
augmentations or slide inference of the original probes (docs/deviations.md, 14).

Each ``run_*`` function takes the train / test ground truth as tensors and the features of one
model (``DenseFeatures``), and returns the dataset-level metrics plus the predictions of the
first test images (for the qualitative panels); ``cross_validate`` repeats one over folds of rooms.

Deviation (docs/deviations.md, 41): the heads train and predict in float64. Summation order
changes with the number of threads, and in float32 those rounding differences grow over a
probe's steps into different scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
from snd_hf.eval.probe import ProbeConfig, ProbeFit, stopping_split, train_probe
from snd_hf.eval.segmentation import SegmentationProbe, segmentation_loss

__all__ = [
    "DenseArrays",
    "ProbeData",
    "TaskResult",
    "cross_validate",
    "run_correspondence",
    "run_depth",
    "run_normals",
    "run_segmentation",
]


@dataclass
class DenseArrays:
    """One split of a dense dataset held in memory.

    Attributes:
        images: RGB in [0, 1]. [N, 3, H, W]
        depth: metres, 0 = missing. [N, H, W]
        normals: camera-frame unit normals, 0 = missing. [N, 3, H, W]
        labels: class ids, 255 = ignored. [N, H, W]
        key: identifies the images (dataset, split, size) in the feature cache.
        groups: the room (scene) of every image: probes set validation rooms aside and
            ``cross_validate`` folds by it; None when unknown. [N]
    """

    images: torch.Tensor
    depth: torch.Tensor | None = None
    normals: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    key: str = ""
    groups: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, indices: torch.Tensor, key: str) -> DenseArrays:
        """The images at ``indices`` (and their ground truth) under a new cache ``key``. [n]"""
        take = [None if value is None else value[indices] for value in (self.images, self.depth, self.normals, self.labels, self.groups)]
        images, depth, normals, labels, groups = take
        return DenseArrays(images, depth, normals, labels, key, groups)


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
    probe_steps: int | None = None  # steps of the head that was scored


def _as_float64(value: torch.Tensor) -> torch.Tensor:
    return value.double() if value.is_floating_point() else value


def _fit(probe: torch.nn.Module, loss_of, train: DenseArrays, config: ProbeConfig, description: str) -> ProbeFit:
    """Train a float64 ``probe`` with ``loss_of(indices, step)`` on the training images not set aside for the stopping rule."""
    probe.double()
    fit_indices, held = stopping_split(len(train), train.groups, config)

    def validation_loss() -> float:
        chunks = held.split(config.batch_size)
        return sum(float(loss_of(chunk, math.inf)) * len(chunk) for chunk in chunks) / len(held)

    return train_probe(
        probe, lambda indices, step: loss_of(fit_indices[indices], step), len(fit_indices), config, description,
        validation_loss if len(held) else None,
    )  # fmt: skip


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
    upsample: int = 4,
) -> TaskResult:
    """Depth probe: train on ``data.train``, per-image metrics on ``data.test`` averaged.

    ``protocol`` ("fit3d" drops test images without a scored pixel, "probe3d" counts them as zeros) and
    ``scale_invariant`` (Probe3D's least-squares scale-and-shift alignment per image before the
    metrics) are passed to ``depth_metrics``; ``upsample`` is the head's factor from the patch grid
    to its prediction grid (the protocol's 4).
    """
    _seeded(config)
    probe = DepthProbe(data.train_features.patch.shape[1], data.train_features.cls.shape[1], min_depth, max_depth, upsample=upsample)

    def batch_loss(indices: torch.Tensor, step: float) -> torch.Tensor:
        features = data.train_features
        prediction = probe(_as_float64(features.patch[indices]), _as_float64(features.cls[indices]))
        target = _as_float64(data.train.depth[indices])
        return depth_probe_loss(prediction, target, max_depth, warm_up=step < config.loss_warmup_steps)

    fit = _fit(probe, batch_loss, data.train, config, "depth probe")

    def predict(indices: torch.Tensor) -> torch.Tensor:
        prediction = probe(_as_float64(data.test_features.patch[indices]), _as_float64(data.test_features.cls[indices]))
        return F.interpolate(prediction[:, None], size=data.test.depth.shape[-2:], mode="bilinear", align_corners=False)[:, 0]

    predictions = torch.cat(_predict_in_batches(predict, len(data.test), config.batch_size))
    valid = depth_eval_mask(data.test.depth, min_depth, max_depth, crop)
    per_image = [
        depth_metrics(predictions[i], data.test.depth[i], valid[i], protocol, scale_invariant) for i in range(len(data.test))
    ]
    return TaskResult(average_metrics(per_image), fit.losses, list(predictions[:num_predictions].float()), fit.best_step)


def run_normals(
    data: ProbeData,
    config: ProbeConfig,
    num_predictions: int = 3,
) -> TaskResult:
    """Surface-normal probe on pre-norm tokens; per-image angular metrics averaged."""
    _seeded(config)
    probe = NormalProbe(data.train_features.prenorm.shape[1])

    def batch_loss(indices: torch.Tensor, step: float) -> torch.Tensor:
        normals, kappa = probe(_as_float64(data.train_features.prenorm[indices]))
        target = _as_float64(data.train.normals[indices])
        return normal_uncertainty_loss(normals, kappa, target, target.norm(dim=1) > 0.5)

    fit = _fit(probe, batch_loss, data.train, config, "normal probe")

    def predict(indices: torch.Tensor) -> torch.Tensor:
        normals, _ = probe(_as_float64(data.test_features.prenorm[indices]))
        normals = F.interpolate(normals, size=data.test.normals.shape[-2:], mode="bilinear", align_corners=False)
        return F.normalize(normals, dim=1)

    predictions = torch.cat(_predict_in_batches(predict, len(data.test), config.batch_size))
    valid = data.test.normals.norm(dim=1) > 0.5
    per_image = [normal_metrics(predictions[i], _as_float64(data.test.normals[i]), valid[i]) for i in range(len(data.test))]
    return TaskResult(average_metrics(per_image), fit.losses, list(predictions[:num_predictions].float()), fit.best_step)


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

    def batch_loss(indices: torch.Tensor, step: float) -> torch.Tensor:
        logits = probe(_as_float64(data.train_features.patch[indices]), size)
        return segmentation_loss(logits, data.train.labels[indices], IGNORE_INDEX)

    fit = _fit(probe, batch_loss, data.train, config, "segmentation probe")
    meter = SegmentationMeter(num_classes, IGNORE_INDEX)

    def predict(indices: torch.Tensor) -> torch.Tensor:
        prediction = probe(_as_float64(data.test_features.patch[indices]), tuple(data.test.labels.shape[-2:])).argmax(dim=1)
        meter.update(prediction, data.test.labels[indices])
        return prediction

    predictions = torch.cat(_predict_in_batches(predict, len(data.test), config.batch_size))
    return TaskResult(meter.compute(), fit.losses, list(predictions[:num_predictions]), fit.best_step)


def cross_validate(
    run: Callable[[ProbeData], TaskResult], arrays: DenseArrays, features: DenseFeatures, folds: int
) -> dict[str, dict[str, float | list[float]]]:
    """Score one probe by k-fold cross-validation over rooms: each fold of rooms is tested once, by a head trained on the others.

    Args:
        run: one task on one split, e.g. ``functools.partial(run_depth, config=..., ...)``.
        arrays: every image, with ``groups`` (its room). [N, ...]
        features: one model's features of ``arrays``. [N, ...]
        folds: k, at most the number of rooms; the rooms, in sorted order, are cut into k
            contiguous folds of (nearly) equal size.

    Returns:
        per metric: ``mean`` and ``std`` (population) over folds, the ``folds`` values, and
        ``probe_steps`` (the kept head's steps per fold) under the key ``probe_steps``.

    Raises:
        ValueError: ``arrays`` has no groups, or fewer rooms than folds (or fewer than 2 folds).
    """
    if arrays.groups is None:
        raise ValueError("cross-validation by room needs the room of every image (DenseArrays.groups)")
    rooms = torch.unique(arrays.groups)
    if folds < 2 or folds > len(rooms):
        raise ValueError(f"folds must be between 2 and the number of rooms ({len(rooms)}), got {folds}")
    per_fold: dict[str, list[float]] = {}
    steps = []
    for fold, test_rooms in enumerate(torch.tensor_split(rooms, folds)):
        test = torch.isin(arrays.groups, test_rooms)
        train_indices, test_indices = test.logical_not().nonzero()[:, 0], test.nonzero()[:, 0]
        result = run(
            ProbeData(
                arrays.subset(train_indices, f"{arrays.key}-fold{fold}-train"), features[train_indices],
                arrays.subset(test_indices, f"{arrays.key}-fold{fold}-test"), features[test_indices],
            )
        )  # fmt: skip
        for name, value in result.metrics.items():
            per_fold.setdefault(name, []).append(value)
        steps.append(result.probe_steps)
    summary: dict[str, dict[str, float | list[float]]] = {}
    for name, values in per_fold.items():
        folded = torch.tensor(values, dtype=torch.float64)
        summary[name] = {"mean": float(folded.mean()), "std": float(folded.std(unbiased=False)), "folds": values}
    summary["probe_steps"] = {"folds": steps}
    return summary


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
