"""The distillation losses between the student's target-view tokens and the teacher's targets.

Four objectives (``TrainingConfig.loss``):

- ``"dino_head"`` (the paper, ``vit/dinov2.py``): both sides go through a DINO head; the loss is
  the cross-entropy ``−Σ_k p_k log q_k`` of the teacher's softmax against the student's
  log-softmax. DINO's two guards against collapse are available: centring of the teacher logits
  (Caron et al. 2021, ``center_momentum`` 0.9 in DINO) and a teacher-temperature warm-up
  (DINO: 0.04 → 0.07 over 30 epochs). SnD uses neither (temperatures 1, no centring).
- ``"cosine"``: ``1 − cos(student token, target token)`` on the backbone tokens, no head (docs/snd_effect.md
  explains why): with no head there is no prototype softmax to collapse, and with a frozen
  teacher the targets cannot drift towards a constant.
- ``"mse"``: mean squared error over channels on the backbone tokens (FiT3D-style feature
  regression).
- ``"info_nce"``: InfoNCE (van den Oord et al. 2018) per token on the backbone tokens, in the
  dense form of DenseCL (Wang et al. 2021): each covered student token must pick its own target
  among the targets of every covered token of the batch (on this process). Where the cosine loss
  only asks a token to point near its target, this also asks it to point away from its
  neighbours' targets, the part of the signal a correspondence match depends on. The default CPU
  recipe, with an EMA teacher (docs/snd_effect.md).

Every loss averages over the covered tokens only (Deviation, docs/deviations.md "loss: holes").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    covered: torch.Tensor | None = None,
    *,
    student_temp: float = 1.0,
    teacher_temp: float = 1.0,
    center: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy ``−Σ_k p_k log q_k`` averaged over the covered tokens.

    ``p = softmax((teacher − center) / teacher_temp)`` (no gradient; SnD uses no centre) and
    ``q = softmax(student / student_temp)``.

    Deviation (docs/deviations.md, loss: holes): the original zero-fills uncovered tokens on both
    sides and keeps them in the mean; here they are excluded. With no covered token the loss is 0 (still attached to the graph, so
    distributed backward passes stay in step).

    Args:
        student_logits: student head logits. [..., K]
        teacher_logits: teacher head logits on the rendered features. [..., K]
        covered: tokens that count, or None for all. [...]
        center: DINO's running mean of the teacher logits, or None. [K]

    Returns:
        The mean cross-entropy (a scalar tensor).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape, got {list(student_logits.shape)} "
            f"and {list(teacher_logits.shape)}."
        )
    targets = teacher_probabilities(teacher_logits, teacher_temp, center)
    log_probs = torch.log_softmax(student_logits.float() / student_temp, dim=-1)
    return covered_mean(-(targets * log_probs).sum(dim=-1), covered)


def teacher_probabilities(logits: torch.Tensor, temperature: float, center: torch.Tensor | None = None) -> torch.Tensor:
    """DINO's teacher distribution ``softmax((logits − center) / temperature)``, without gradient. [..., K]"""
    logits = logits.detach().float()
    if center is not None:
        # Deviation (DINO centring, optional): DINO's centring; SnD has none.
        logits = logits - center
    return torch.softmax(logits / temperature, dim=-1)


def cosine_loss(student: torch.Tensor, target: torch.Tensor, covered: torch.Tensor | None = None) -> torch.Tensor:
    """``1 − cos(student, target)`` per token, averaged over the covered tokens.

    Args:
        student: student tokens. [B, V, C, h, w]
        target: teacher targets (no gradient flows into them). [B, V, C, h, w]
        covered: tokens that count, or None for all. [B, V, h, w]
    """
    _check_features(student, target, covered)
    similarity = F.cosine_similarity(student.float(), target.detach().float(), dim=2, eps=1e-6)
    return covered_mean(1.0 - similarity, covered)


def mse_loss(student: torch.Tensor, target: torch.Tensor, covered: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over channels of ``(student − target)²`` per token, averaged over the covered tokens (shapes as :func:`cosine_loss`)."""
    _check_features(student, target, covered)
    return covered_mean((student.float() - target.detach().float()).pow(2).mean(dim=2), covered)


def info_nce_loss(
    student: torch.Tensor, target: torch.Tensor, covered: torch.Tensor | None = None, *, temperature: float = 0.2
) -> torch.Tensor:
    """Dense InfoNCE: cross-entropy of each covered student token over all covered targets, its own the positive.

    Args:
        student: student tokens. [B, V, C, h, w]
        target: teacher targets (no gradient flows into them). [B, V, C, h, w]
        covered: tokens that count, or None for all. [B, V, h, w]
        temperature: of the softmax over cosine similarities.

    Returns:
        the mean over covered tokens of ``−log softmax_j(cos(s_i, t_j) / temperature)[i]``; 0, still
        in the graph, when no token is covered.
    """
    _check_features(student, target, covered)
    channels = student.shape[2]
    queries = student.float().movedim(2, -1).reshape(-1, channels)  # [N, C]
    keys = target.detach().float().movedim(2, -1).reshape(-1, channels)
    if covered is not None:
        keep = covered.reshape(-1)
        queries, keys = queries[keep], keys[keep]
    if len(queries) == 0:
        return student.sum() * 0.0
    logits = F.normalize(queries, dim=-1, eps=1e-6) @ F.normalize(keys, dim=-1, eps=1e-6).T / temperature
    return F.cross_entropy(logits, torch.arange(len(queries), device=logits.device))


def covered_mean(per_token: torch.Tensor, covered: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``per_token`` [...] over ``covered`` [...] (all when None); 0, still in the graph, when none is covered."""
    if covered is None:
        return per_token.mean()
    if covered.shape != per_token.shape:
        raise ValueError(f"covered must have shape {list(per_token.shape)}, got {list(covered.shape)}.")
    weights = covered.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp_min(1.0)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: torch.Tensor, covered: torch.Tensor, momentum: float) -> None:
    """DINO's centring: ``center ← m · center + (1 − m) · mean of the covered tokens' teacher logits``, in place.

    In a distributed run the mean is over every process's tokens (all-reduced, as in DINO), so all
    processes keep the same centre.

    Args:
        center: running centre. [K]
        teacher_logits: teacher head logits. [..., K]
        covered: tokens that count. [...]
    """
    tokens = teacher_logits.detach().float()[covered]
    totals = torch.cat([tokens.sum(0), tokens.new_tensor([tokens.shape[0]])])  # [K + 1]: sums and count
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    if totals[-1] > 0:
        center.mul_(momentum).add_(totals[:-1] / totals[-1], alpha=1.0 - momentum)


def teacher_temperature(step: int, final: float, start: float | None, warmup_steps: int) -> float:
    """DINO's linear teacher-temperature warm-up: ``start`` → ``final`` over ``warmup_steps`` (then ``final``)."""
    if start is None or warmup_steps <= 0 or step >= warmup_steps:
        return final
    return start + (final - start) * step / warmup_steps


def _check_features(student: torch.Tensor, target: torch.Tensor, covered: torch.Tensor | None) -> None:
    if student.shape != target.shape or student.ndim != 5:
        raise ValueError(
            f"student and target must be [B, V, C, h, w] of the same shape, got {list(student.shape)} and {list(target.shape)}."
        )
    if covered is not None and covered.shape != student.shape[:2] + student.shape[3:]:
        raise ValueError(f"covered must have shape {list(student.shape[:2] + student.shape[3:])}, got {list(covered.shape)}.")
