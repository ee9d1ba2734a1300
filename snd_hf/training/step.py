"""The forward half of one SnD training step: the teacher's targets and the student's loss on them.

:func:`teacher_targets` runs the teacher (EMA or frozen copy of the student) on the context views
and turns its tokens into targets for the target views: SnD's splatted targets, or one of the two
geometry-free controls (``TrainingConfig.targets``). :func:`student_loss` runs the student on the
target views and scores it against them with the configured loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..splatting.teacher import OperatorCache, SplatTeacher, TeacherTargets
from .config import TrainingConfig
from .loss import (
    cosine_loss,
    info_nce_loss,
    koleo_loss,
    mse_loss,
    sinkhorn_knopp,
    soft_cross_entropy,
    teacher_probabilities,
    teacher_temperature,
    update_center,
)
from .student import BackboneWithHead


@dataclass
class StepOutputs:
    """What one step's forward computed, for the backward pass and the diagnostics.

    Attributes:
        loss: the scalar loss (with gradient).
        student_features: the student's target-view tokens (detached). [B, Vt, C, h, w]
        target_features: the teacher's targets. [B, Vt, C, h, w]
        coverage: tokens in the loss. [B, Vt, h, w]
        teacher_probs: loss "dino_head": the teacher's prototype distribution, else None. [B, Vt, h, w, K]
    """

    loss: torch.Tensor
    student_features: torch.Tensor
    target_features: torch.Tensor
    coverage: torch.Tensor
    teacher_probs: torch.Tensor | None = None


def teacher_targets(
    ema_teacher: BackboneWithHead,
    target_renderer: SplatTeacher,
    batch: dict,
    config: TrainingConfig,
    operators: OperatorCache | None = None,
) -> TeacherTargets:
    """The teacher's targets for the target views of ``batch``.

    ``config.targets``: ``"splat"`` (SnD: context tokens lifted, splatted and blended into the target
    views), or a control that keeps SnD's compute and coverage but not its geometry:
    ``"self_distillation"`` (the teacher's own tokens of the target view) or ``"cross_view_copy"``
    (the nearer context view's tokens at the same grid positions).

    Args:
        ema_teacher: the teacher ViT (backbone + optional head), an EMA or frozen copy of the student.
        target_renderer: the splatting teacher: lifting, splatting and blending of the context features.
        batch: a scene batch (``context`` and ``target`` views, ``index``). [B, V, ...]
        config: ``targets``.
        operators: a per-sample operator cache (frozen lifter), or None for the direct path.

    Returns:
        :class:`~snd_hf.splatting.teacher.TeacherTargets`: features [B, Vt, C, h, w] and coverage [B, Vt, h, w].
    """
    # inference_mode, not no_grad: the teacher's forward skips autograd's version and view tracking
    # (bit-exact, and cheaper; benchmarks/bench_train.py). The clones make ordinary tensors,
    # which the loss may save for its backward.
    with torch.inference_mode():
        targets = _teacher_targets(ema_teacher, target_renderer, batch, config, operators)
    alpha = None if targets.alpha is None else targets.alpha.clone()
    return TeacherTargets(targets.features.clone(), targets.coverage.clone(), alpha)


def _teacher_targets(
    ema_teacher: BackboneWithHead, target_renderer: SplatTeacher, batch: dict, config: TrainingConfig, operators: OperatorCache | None
) -> TeacherTargets:
    context_features = ema_teacher.features(batch["context"]["image"])  # [B, Vc, C, hc, wc]
    if operators is not None:
        # Deviation (teacher computation): the cached linear map, the same targets as the direct path.
        operator = operators(batch)
        splatted = TeacherTargets(operator.apply(context_features), operator.coverage)
    else:
        splatted = target_renderer(context_features, batch)
    if config.targets == "splat":
        return splatted
    # Deviation (controls): same compute and coverage, no geometry.
    if config.targets == "self_distillation":
        features = ema_teacher.features(batch["target"]["image"])
    else:
        features = nearest_context_tokens(context_features, batch["index"])
    if features.shape != splatted.features.shape:
        raise ValueError(
            f"targets {config.targets!r} need context and target views of one size, got token grids "
            f"{list(features.shape[-2:])} and {list(splatted.features.shape[-2:])}."
        )
    return TeacherTargets(features, splatted.coverage)


def nearest_context_tokens(context_features: torch.Tensor, index: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each target view's nearest context view (by frame position; ties: the first) tokens, unmoved.

    Args:
        context_features: context-view tokens. [B, Vc, C, h, w]
        index: ``{"context": [B, Vc], "target": [B, Vt]}`` frame positions.

    Returns:
        tokens of the chosen context view per target view. [B, Vt, C, h, w]
    """
    distance = (index["target"][:, :, None] - index["context"][:, None, :]).abs()  # [B, Vt, Vc]
    nearest = distance.argmin(-1).to(context_features.device)  # first minimum
    batch = torch.arange(context_features.shape[0], device=context_features.device)[:, None]
    return context_features[batch, nearest]


def student_loss(
    student: torch.nn.Module,
    ema_teacher: BackboneWithHead,
    batch: dict,
    targets: TeacherTargets,
    config: TrainingConfig,
    step: int = 0,
) -> StepOutputs:
    """The student's tokens of the target views against the teacher's targets, over the covered tokens.

    Loss "dino_head" passes the targets through the teacher's head (temperature warm-up and
    centring per ``config``; the centre is updated after use, as in DINO); "cosine", "mse" and
    "info_nce" compare the backbone tokens directly.

    Args:
        student: the trained module (``BackboneWithHead``, possibly wrapped for DDP).
        ema_teacher: the teacher ViT (EMA or frozen), whose head scores the targets for "dino_head".
        batch: a scene batch; its ``target`` views are used. [B, Vt, 3, H, W]
        targets: from :func:`teacher_targets`.
        config: loss, temperatures, centring.
        step: optimizer steps done (the temperature warm-up's clock).

    Returns:
        :class:`StepOutputs`.
    """
    features, logits = student(batch["target"]["image"])  # [B, Vt, C, h, w], [B, Vt, h, w, K] or None
    coverage = targets.coverage
    probabilities = None
    if config.loss == "dino_head":
        with torch.no_grad():
            teacher_logits = ema_teacher.logits(targets.features.float())
        temperature = teacher_temperature(step, config.teacher_temp, config.teacher_temp_warmup, config.teacher_temp_warmup_steps)
        center = ema_teacher.head.center if config.center_momentum is not None else None
        if config.sinkhorn_iterations:
            # Deviation (docs/deviations.md, 42): DINOv2's Sinkhorn-Knopp centring, optional; SnD uses a plain softmax.
            probabilities = sinkhorn_knopp(teacher_logits, coverage, temperature, config.sinkhorn_iterations)
        else:
            probabilities = teacher_probabilities(teacher_logits, temperature, center)
        loss = soft_cross_entropy(logits, probabilities, coverage, config.student_temp)
        if center is not None:
            update_center(center, teacher_logits, coverage, config.center_momentum)
    # Deviation (objective, optional): "cosine", "mse" and "info_nce" use no head, the backbone tokens themselves.
    elif config.loss == "cosine":
        loss = cosine_loss(features, targets.features, coverage)
    elif config.loss == "info_nce":
        segments = None
        if not config.same_segment_negatives:
            # Deviation (docs/deviations.md, 43): each token's instance id at its patch centre, optional.
            patch = batch["target"]["image"].shape[-1] // features.shape[-1]
            segments = batch["target"]["mask"][..., patch // 2 :: patch, patch // 2 :: patch][..., : features.shape[-2], : features.shape[-1]]
        loss = info_nce_loss(features, targets.features, coverage, temperature=config.contrastive_temperature, segments=segments)
    else:
        loss = mse_loss(features, targets.features, coverage)
    if config.koleo_weight:
        # Deviation (docs/deviations.md, 42): DINOv2's KoLeo, optional; SnD has no regulariser.
        loss = loss + config.koleo_weight * koleo_loss(features, coverage)
    return StepOutputs(loss, features.detach(), targets.features, coverage, probabilities)
