"""The forward half of one SnD training step: the teacher's targets and the student's loss on them."""

from __future__ import annotations

import torch

from ..splatting.teacher import SplatTeacher
from .config import TrainingConfig
from .loss import distillation_loss
from .student import BackboneWithHead


@torch.no_grad()
def teacher_logits(teacher: BackboneWithHead, splat_teacher: SplatTeacher, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """EMA backbone on the context views → lift, splat, blend into the target views → teacher head.

    Args:
        teacher: the EMA teacher (backbone + head).
        splat_teacher: lifting, splatting and blending of the context features.
        batch: a scene batch (``context`` and ``target`` views). [B, V, ...]

    Returns:
        logits: teacher head logits per target token. [B, Vt, h, w, K]
        coverage: tokens the Gaussians cover. [B, Vt, h, w]
    """
    context_features = teacher.features(batch["context"]["image"])  # [B, Vc, C, hc, wc]
    targets = splat_teacher(context_features, batch)  # features [B, Vt, C, h, w]
    return teacher.logits(targets.features.float()), targets.coverage


def student_loss(
    student: torch.nn.Module, batch: dict, teacher_logits: torch.Tensor, coverage: torch.Tensor, config: TrainingConfig
) -> torch.Tensor:
    """The student's own logits of the target views against the teacher's, over the covered tokens.

    Args:
        student: the trained module (``BackboneWithHead``, possibly wrapped for DDP).
        batch: a scene batch; its ``target`` views are used. [B, Vt, 3, H, W]
        teacher_logits: from :func:`teacher_logits`. [B, Vt, h, w, K]
        coverage: from :func:`teacher_logits`. [B, Vt, h, w]
        config: supplies the softmax temperatures.

    Returns:
        The distillation loss (a scalar tensor).
    """
    return distillation_loss(
        student(batch["target"]["image"]),  # [B, Vt, h, w, K]
        teacher_logits,
        coverage,
        student_temp=config.student_temp,
        teacher_temp=config.teacher_temp,
    )
