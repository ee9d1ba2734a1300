"""Benchmark of disentangled feature fields on generated glossy scenes with ground truth.

Per scene, the views are split into training views (fitted) and held-out views (every
``hold_out``-th, never fitted, never used to choose anything). Compared:

- **(i) disentangled**: our field, one-click 3D segmentation from ``f_ind`` (the selection rule
  ``method``: ``"region"``, the neighbour-graph region, by default; the per-Gaussian cosine
  ``"threshold"`` rule is scored beside it as "(i), threshold");
- **(ii) single field**: a single view-independent feature field, fitted the same way to the same
  Gaussians with the same steps (FiT3D / Feature-3DGS style), segmentation from its features;
- **(iii) 2D features**: no 3D: the teacher's features of each held-out view, upsampled to pixels,
  thresholded on their cosine similarity to the teacher's feature under the click.

The click: for every object (not walls, floor or ceiling), the training view where the object's
most interior pixel (largest distance to its boundary) lies deepest, at that pixel: what a person
clicking the middle of a clearly visible object would do. All methods use the same click and the
same similarity threshold. Score: IoU of the predicted and ground-truth object pixels pooled over
the held-out views, averaged over objects (mIoU), for all objects and for the glossy ones.
Highlight segmentation: IoU of :func:`~snd_hf.fields.segment.highlight_masks` of (i) against the
generator's highlight masks, pooled over the held-out views. Segment everything (no clicks):
:func:`~snd_hf.fields.segment.segment_everything` on (i), its segments rendered into the held-out
views and matched one-to-one to the objects by the Hungarian method on their pooled IoU
(``scipy.optimize.linear_sum_assignment``); mIoU over the objects (an unmatched object scores 0).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from .field import FeatureField
from .features import as_feature_source, teacher_features, upsample
from .fit import FitConfig, fit_appearance, fit_features
from .scene import FieldScene
from .segment import (
    HIGHLIGHT_RATIO,
    SIMILARITY,
    Method,
    highlight_masks,
    segment_everything,
    segment_masks,
    select_by_click,
    selection_masks,
)

FIRST_OBJECT_ID = 7  # the generator's ids 1-6 are the room's walls, floor and ceiling


@dataclass
class SceneScores:
    """Scores of one scene: IoU per method and object id, highlight IoU, segment-everything IoU per
    object id, wall-clock and process CPU seconds per stage, and the stage-1 field."""

    objects: list[int]
    glossy: list[int]
    iou: dict[str, dict[int, float]] = field(default_factory=dict)
    highlight_iou: float | None = None
    everything_iou: dict[int, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    appearance: FeatureField | None = None  # the stage-1 field, for reuse with another teacher


def click_for_object(scene: FieldScene, views: list[int], instance: int) -> tuple[int, tuple[int, int]] | None:
    """The most interior pixel of ``instance`` over ``views``: (position in ``views``, (x, y)), or None if unseen."""
    best = None
    for position, view in enumerate(views):
        inside = (scene.instances[view] == instance).float()
        if inside.sum() == 0:
            continue
        depth, layer = torch.zeros_like(inside), inside
        while layer.sum() > 0:  # distance to the boundary, by repeated 3x3 erosion
            depth += layer
            layer = -F.max_pool2d(-layer[None, None], 3, stride=1, padding=1)[0, 0]
        index = int(depth.flatten().argmax())
        if best is None or depth.max() > best[0]:
            best = (float(depth.max()), position, (index % inside.shape[1], index // inside.shape[1]))
    return None if best is None else (best[1], best[2])


def iou(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    union = (predicted | truth).sum().item()
    return (predicted & truth).sum().item() / union if union else 1.0


def matched_iou(predicted: torch.Tensor, truth: torch.Tensor, objects: list[int]) -> dict[int, float]:
    """Hungarian matching of predicted segments to objects, by pooled IoU.

    Args:
        predicted: segment id per pixel, -1 for none. [V, H, W]
        truth: instance id per pixel. [V, H, W]
        objects: the instance ids to score.

    Returns:
        per object, the IoU of the segment matched to it (0 when none is). {id: IoU}
    """
    segments = int(predicted.max()) + 1
    if segments <= 0 or not objects:
        return {instance: 0.0 for instance in objects}
    scores = torch.tensor([[iou(predicted == segment, truth == instance) for segment in range(segments)] for instance in objects])
    rows, columns = linear_sum_assignment(scores.numpy(), maximize=True)
    matched = {instance: 0.0 for instance in objects}
    for row, column in zip(rows, columns):
        matched[objects[row]] = float(scores[row, column])
    return matched


def specular_sensitivity(
    feature_model, glossy: torch.Tensor, matte: torch.Tensor, highlights: torch.Tensor, short_side: int = 224
) -> dict[str, tuple[float, int]]:
    """How much a teacher's features change under the specular term: the same views with and without it.

    Per pixel (features upsampled bilinearly), ``‖T(glossy) - T(matte)‖ / ‖T(matte) - mean‖``,
    summed over the highlight pixels and over the other pixels (sums and counts, so that scenes
    pool; a scene may show no highlight).

    Args:
        glossy: the views with highlights, RGB in [0, 1]. [V, 3, H, W]
        matte: the same views without the specular term. [V, 3, H, W]
        highlights: the generator's highlight masks. [V, H, W] bool

    Returns:
        ``{"highlights": (sum, pixels), "elsewhere": (sum, pixels)}``.
    """
    source = as_feature_source(feature_model, short_side)
    views = torch.arange(len(glossy))
    with_term = upsample(teacher_features(source, glossy, views), glossy.shape[-2:])
    without = upsample(teacher_features(source, matte, views), matte.shape[-2:])
    change = (with_term - without).norm(dim=1) / (without - without.mean((0, 2, 3), keepdim=True)).norm(dim=1).clamp_min(1e-8)
    return {
        "highlights": (float(change[highlights].sum()), int(highlights.sum())),
        "elsewhere": (float(change[~highlights].sum()), int((~highlights).sum())),
    }


def evaluate_scene(
    scene: FieldScene,
    feature_model,
    config: FitConfig | None = None,
    hold_out: int = 4,
    threshold: float = SIMILARITY,
    highlight_ratio: float = HIGHLIGHT_RATIO,
    min_pixels: int = 50,
    progress: bool = False,
    device: torch.device | str = "cpu",
    method: Method = "region",
    appearance=None,
) -> SceneScores:
    """Fit (i) and (ii) on the training views of one scene and score (i)-(iii) on the held-out views.

    Args:
        scene: a generated scene with ``instances`` (and ``highlights`` for the highlight score).
        feature_model: the 2D teacher (see :func:`~snd_hf.fields.features.as_feature_source`).
        hold_out: every ``hold_out``-th view (offset ``hold_out // 2``) is held out.
        threshold: cosine similarity of a selected Gaussian / pixel for ``"threshold"`` and (iii).
        min_pixels: objects with fewer pixels in the training or held-out views are skipped.
        device: where the fields are fitted ("cuda" renders with gsplat).
        method: the 3D selection rule of (i) and (ii) (see :func:`~snd_hf.fields.segment.select_by_click`).
        appearance: a field from :func:`~snd_hf.fields.fit.fit_appearance` on this scene's training
            views, to reuse (several teachers, one stage 1); fitted when None.
    """
    if scene.instances is None:
        raise ValueError("the scene has no instance masks to score segmentation against")
    config = config or FitConfig()
    views = range(len(scene))
    train = [view for view in views if view % hold_out != hold_out // 2]
    held = [view for view in views if view % hold_out == hold_out // 2]
    source = as_feature_source(feature_model, config.short_side)
    truth = scene.instances[held]
    objects = [
        int(instance)
        for instance in scene.instances.unique()
        if instance >= FIRST_OBJECT_ID
        and (scene.instances[train] == instance).sum() >= min_pixels
        and (truth == instance).sum() >= min_pixels
    ]
    scores = SceneScores(objects=objects, glossy=[o for o in objects if o in scene.glossy_instances])

    start, cpu = time.perf_counter(), time.process_time()
    if appearance is None:
        appearance = fit_appearance(scene, config, train_views=train, progress=progress, device=device)
    elif appearance.info.get("train_views") != train:
        raise ValueError(f"`appearance` was fitted to views {appearance.info.get('train_views')}, not the training views {train}")
    scores.seconds["appearance"], scores.seconds["appearance cpu"] = time.perf_counter() - start, time.process_time() - cpu
    scores.appearance = appearance
    fields = {}
    for name, disentangled in (("disentangled", True), ("single", False)):
        start, cpu = time.perf_counter(), time.process_time()
        fields[name] = fit_features(appearance, scene, source, config, disentangled=disentangled, progress=progress)
        scores.seconds[f"features ({name})"] = time.perf_counter() - start
        scores.seconds[f"features ({name}) cpu"] = time.process_time() - cpu

    held_cameras = scene.cameras[held]
    teacher = upsample(teacher_features(source, scene.images, torch.arange(len(scene))), scene.image_size)
    for name in ("disentangled", "disentangled threshold", "single", "2d"):
        scores.iou[name] = {}
    for instance in objects:
        position, (x, y) = click_for_object(scene, train, instance)
        expected = truth == instance
        for name, fitted in fields.items():
            selection = select_by_click(fitted, position, (x, y), threshold, method=method)
            scores.iou[name][instance] = iou(selection_masks(fitted, selection, held_cameras), expected)
        selection = select_by_click(fields["disentangled"], position, (x, y), threshold, method="threshold")
        scores.iou["disentangled threshold"][instance] = iou(selection_masks(fields["disentangled"], selection, held_cameras), expected)
        query = teacher[train[position], :, y, x]
        similarity = F.cosine_similarity(teacher[held], query[None, :, None, None], dim=1)
        scores.iou["2d"][instance] = iou(similarity >= threshold, expected)
    if scene.highlights is not None:
        predicted = highlight_masks(fields["disentangled"], held_cameras, highlight_ratio)
        scores.highlight_iou = iou(predicted, scene.highlights[held])
    labels = segment_everything(fields["disentangled"])
    scores.everything_iou = matched_iou(segment_masks(fields["disentangled"], labels, held_cameras), truth, objects)
    return scores
