"""The distillation losses between the student's target-view tokens and the teacher's targets.

Four objectives (``TrainingConfig.loss``):

- ``"dino_head"`` (the paper, ``vit/dinov2.py``): both sides go through a DINO head; the loss is
  the cross-entropy ``−Σ_k p_k log q_k`` of the teacher's softmax against the student's
  log-softmax. DINO's two guards against collapse are available: centring of the teacher logits
  (Caron et al. 2021, ``center_momentum`` 0.9 in DINO) and a teacher-temperature warm-up
  (DINO: 0.04 → 0.07 over 30 epochs). SnD uses neither (temperatures 1, no centring). DINOv2's
  two further guards are available too: Sinkhorn-Knopp centring of the teacher (Caron et al. 2020,
  SwAV; DINOv2 uses 3 iterations), which makes every prototype carry an equal share of the batch,
  and the KoLeo regulariser (Sablayrolles et al. 2019; DINOv2 weight 0.1), which spreads the
  student's tokens over the sphere.
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

_TINY = torch.finfo(torch.float64).tiny  # keeps a fully underflowed row or column at 0 instead of NaN


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
    return soft_cross_entropy(student_logits, teacher_probabilities(teacher_logits, teacher_temp, center), covered, student_temp)


def soft_cross_entropy(
    student_logits: torch.Tensor, targets: torch.Tensor, covered: torch.Tensor | None = None, student_temp: float = 1.0
) -> torch.Tensor:
    """``−Σ_k p_k log softmax(student / student_temp)_k`` averaged over the covered tokens.

    Args:
        student_logits: student head logits. [..., K]
        targets: the teacher's distribution ``p`` over the prototypes (no gradient). [..., K]
        covered: tokens that count, or None for all. [...]
    """
    log_probs = torch.log_softmax(student_logits.float() / student_temp, dim=-1)
    return covered_mean(-(targets.detach() * log_probs).sum(dim=-1), covered)


def teacher_probabilities(logits: torch.Tensor, temperature: float, center: torch.Tensor | None = None) -> torch.Tensor:
    """DINO's teacher distribution ``softmax((logits − center) / temperature)``, without gradient. [..., K]"""
    logits = logits.detach().float()
    if center is not None:
        # Deviation (DINO centring, optional): DINO's centring; SnD has none.
        logits = logits - center
    return torch.softmax(logits / temperature, dim=-1)


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, covered: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """The teacher's distribution with equal prototype shares over the batch, by Sinkhorn-Knopp (SwAV, DINOv2).

    ``exp(logits / temperature)`` over the covered tokens is scaled alternately so that every
    prototype holds ``1 / K`` of the batch's mass and every token ``1 / N`` of it; each token's row,
    times ``N``, is its distribution. A teacher that puts every token on one prototype, or spreads
    every token evenly, cannot satisfy both at once, which is what keeps it from collapsing. In a
    distributed run the sums run over every process's tokens.

    Args:
        logits: teacher head logits. [..., K]
        covered: the tokens of the batch. [...]
        temperature: of the teacher's softmax (DINOv2: 0.04 → 0.07).
        iterations: scaling rounds (DINOv2: 3).

    Returns:
        one distribution per token (rows sum to 1; uncovered tokens get zeros). [..., K]
    """
    if iterations < 1:
        raise ValueError(f"`iterations` must be at least 1, got {iterations}.")
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    # float64: at teacher temperatures the scores span more than float32's exp range, and a prototype
    # whose entries underflow to 0 could never get its share back.
    tokens = logits.detach().double()[covered]  # [N, K]
    # Subtracting the maximum before exp scales the whole matrix, which the first normalisation
    # removes: the same result, without overflow.
    scores = tokens / temperature
    peak = scores.max() if len(scores) else scores.new_zeros(())
    if distributed:
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    q = torch.exp(scores - peak)
    prototypes = q.shape[-1]
    for _ in range(iterations):
        shares = q.sum(dim=0)  # each prototype's mass over the batch
        if distributed:
            torch.distributed.all_reduce(shares)
        q = q / shares.clamp_min(_TINY) / prototypes
        q = q / q.sum(dim=1, keepdim=True).clamp_min(_TINY)  # then each token's row to 1
    out = logits.new_zeros(logits.shape, dtype=torch.float32)
    out[covered] = q.float()
    return out


def koleo_loss(tokens: torch.Tensor, covered: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo (Sablayrolles et al. 2019, DINOv2): ``−mean log ‖x_i − nearest other x_j‖`` over unit-norm tokens.

    Args:
        tokens: student tokens. [B, V, C, h, w]
        covered: tokens that count, or None for all. [B, V, h, w]

    Returns:
        the regulariser (a scalar tensor); 0, still in the graph, with fewer than 2 tokens.
    """
    points = covered_tokens(tokens, covered)
    if len(points) < 2:
        return tokens.sum() * 0.0
    points = F.normalize(points, dim=-1, eps=eps)
    with torch.no_grad():  # which neighbour is nearest carries no gradient; the distance does
        similarity = points @ points.T
        similarity.fill_diagonal_(-2.0)
        nearest = similarity.argmax(dim=1)
    distance = (points - points[nearest]).norm(dim=-1)
    return -torch.log(distance + eps).mean()


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
    student: torch.Tensor,
    target: torch.Tensor,
    covered: torch.Tensor | None = None,
    *,
    temperature: float = 0.2,
    segments: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense InfoNCE: cross-entropy of each covered student token over all covered targets, its own the positive.

    Args:
        student: student tokens. [B, V, C, h, w]
        target: teacher targets (no gradient flows into them). [B, V, C, h, w]
        covered: tokens that count, or None for all. [B, V, h, w]
        temperature: of the softmax over cosine similarities.
        segments: instance ids of the tokens, or None. When given, the other tokens of a token's
            segment in the same view are left out of its negatives: blended targets make them
            near-copies of its own target, which it could not be asked to tell apart. [B, V, h, w]

    Returns:
        the mean over covered tokens of ``−log softmax_j(cos(s_i, t_j) / temperature)[i]``; 0, still
        in the graph, when no token is covered.
    """
    _check_features(student, target, covered)
    queries = covered_tokens(student, covered)  # [N, C]
    keys = covered_tokens(target.detach(), covered)
    groups = None
    if segments is not None:
        if segments.shape != student.shape[:2] + student.shape[3:]:
            raise ValueError(f"segments must have shape {list(student.shape[:2] + student.shape[3:])}, got {list(segments.shape)}.")
        views = torch.arange(segments.shape[0] * segments.shape[1], device=segments.device).view(segments.shape[:2])
        groups = torch.stack([views[..., None, None].expand_as(segments), segments.long()], dim=-1).reshape(-1, 2)
        groups = groups if covered is None else groups[covered.reshape(-1)]
    if len(queries) == 0:
        return student.sum() * 0.0
    logits = F.normalize(queries, dim=-1, eps=1e-6) @ F.normalize(keys, dim=-1, eps=1e-6).T / temperature
    positives = torch.arange(len(queries), device=logits.device)
    if groups is not None:
        same = (groups[:, None, :] == groups[None, :, :]).all(dim=-1)
        same[positives, positives] = False
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, positives)


def covered_tokens(tokens: torch.Tensor, covered: torch.Tensor | None) -> torch.Tensor:
    """The covered tokens of ``tokens`` [B, V, C, h, w] as float32 rows [N, C] (all B·V·h·w when ``covered`` is None)."""
    rows = tokens.float().movedim(2, -1).reshape(-1, tokens.shape[2])
    return rows if covered is None else rows[covered.reshape(-1)]


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
