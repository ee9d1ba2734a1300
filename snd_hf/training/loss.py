"""The distillation loss: teacher prototypes' softmax against the student's log-softmax."""

from __future__ import annotations

import torch


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    covered: torch.Tensor | None = None,
    *,
    student_temp: float = 1.0,
    teacher_temp: float = 1.0,
) -> torch.Tensor:
    """Cross-entropy ``−Σ_k p_k log q_k`` averaged over the covered tokens.

    ``p = softmax(teacher / teacher_temp)`` (no gradient, no centring, as in SnD) and
    ``q = softmax(student / student_temp)``.

    Deviation (docs/deviations.md, loss: holes): the original zero-fills uncovered tokens on both
    sides and keeps them in the mean; here they are excluded. With no covered token the loss is 0 (still attached to the graph, so
    distributed backward passes stay in step).

    Args:
        student_logits: student head logits. [..., K]
        teacher_logits: teacher head logits on the rendered features. [..., K]
        covered: tokens that count, or None for all. [...]

    Returns:
        The mean cross-entropy (a scalar tensor).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape, got {list(student_logits.shape)} "
            f"and {list(teacher_logits.shape)}."
        )
    if covered is not None and covered.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"covered must have shape {list(student_logits.shape[:-1])} (the logits without K), got {list(covered.shape)}."
        )
    targets = torch.softmax(teacher_logits.detach().float() / teacher_temp, dim=-1)
    log_probs = torch.log_softmax(student_logits.float() / student_temp, dim=-1)
    per_token = -(targets * log_probs).sum(dim=-1)  # [...]
    if covered is None:
        return per_token.mean()
    weights = covered.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp_min(1.0)
