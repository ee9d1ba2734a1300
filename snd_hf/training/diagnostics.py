"""Collapse diagnostics of a distillation run, logged every step next to the loss.

A falling loss does not show that a student learns: a teacher and student that agree on a
constant also drive it down (docs/snd_effect.md: the tiny DINO-head run's teacher entropy fell
while held-out correspondence stayed at its initial value). These quantities
make that visible in ``losses.jsonl`` and the trackers:

- ``teacher_entropy``: mean entropy of the teacher's prototype distribution over the covered
  tokens, in nats (``dino_head`` only). Near ``ln K``: the teacher says nothing (uniform
  collapse); near 0 together with few prototypes: one-prototype collapse.
- ``teacher_batch_entropy``: entropy of the batch-mean teacher distribution (nats): how many
  prototypes the whole batch uses (``exp`` of it is an effective count).
- ``teacher_prototypes``: distinct arg-max prototypes over the covered tokens.
- ``student_rank`` / ``target_rank``: effective rank ``exp(H(σ / Σσ))`` of the covered tokens'
  features ``[N, C]`` (Roy & Vetterli 2007, used as RankMe by Garrido et al. 2023); between 1
  and ``min(N, C)``. Collapse towards a constant drives it towards 1.
- ``coverage``: the fraction of target tokens in the loss.

:class:`CollapseMonitor` warns once when, for ``patience`` consecutive logged steps:

- a rank falls below ``RANK_RATIO`` (0.3) of its first logged value or below 2 (the cosine
  recipe with an EMA teacher at momentum 0.99 every step fell from 47.5 to 8.9, a ratio of 0.19);
- ``dino_head``: the batch uses at most ``MIN_PROTOTYPES`` (4) distinct prototypes or its
  batch-mean entropy is below ``ln 4`` (the diagnosed run used about 3), or the mean token
  entropy stays above ``UNIFORM_RATIO`` (0.98) of ``ln K`` (the teacher never sharpens).
"""

from __future__ import annotations

import math
import warnings

import torch

RANK_RATIO = 0.3
MIN_RANK = 2.0
MIN_PROTOTYPES = 4
UNIFORM_RATIO = 0.98
PATIENCE = 10


@torch.no_grad()
def step_diagnostics(
    coverage: torch.Tensor,
    student_features: torch.Tensor,
    target_features: torch.Tensor,
    teacher_probs: torch.Tensor | None = None,
) -> dict[str, float]:
    """The collapse diagnostics of one step (see the module docstring).

    Args:
        coverage: tokens in the loss. [B, V, h, w]
        student_features: the student's tokens. [B, V, C, h, w]
        target_features: the teacher's targets. [B, V, C, h, w]
        teacher_probs: the teacher's prototype distributions, or None. [B, V, h, w, K]

    Returns:
        ``coverage``, ``student_rank``, ``target_rank`` and, with ``teacher_probs``,
        ``teacher_entropy``, ``teacher_batch_entropy``, ``teacher_prototypes``.
    """
    covered = coverage.bool()
    values = {
        "coverage": covered.float().mean().item(),
        "student_rank": effective_rank(student_features.movedim(2, -1)[covered]),
        "target_rank": effective_rank(target_features.movedim(2, -1)[covered]),
    }
    if teacher_probs is not None:
        probs = teacher_probs[covered].float()  # [N, K]
        if probs.shape[0] == 0:
            return values
        values["teacher_entropy"] = entropy(probs).mean().item()
        values["teacher_batch_entropy"] = entropy(probs.mean(0)).item()
        values["teacher_prototypes"] = int(probs.argmax(-1).unique().numel())
    return values


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of distributions along the last dim. [..., K] → [...]"""
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1)


def effective_rank(features: torch.Tensor) -> float:
    """``exp(H(σ / Σσ))`` of the singular values σ of ``features`` [N, C] (1.0 for fewer than two rows or all
    zeros, NaN when a value is not finite)."""
    if features.shape[0] < 2:
        return 1.0
    if not torch.isfinite(features).all():  # a non-finite step: the guard stops or skips it
        return math.nan
    singular = torch.linalg.svdvals(features.double())
    total = singular.sum()
    if total <= 0:
        return 1.0
    return math.exp(entropy(singular / total).item())


class CollapseMonitor:
    """Warns once when the step diagnostics show collapse (thresholds in the module docstring).

    Args:
        num_prototypes: K of the DINO head (for the uniform-collapse test), or None without a head.
        patience: consecutive logged steps a criterion must hold before the warning.
    """

    def __init__(self, num_prototypes: int | None = None, patience: int = PATIENCE):
        self.num_prototypes, self.patience = num_prototypes, patience
        self.first: dict[str, float] = {}
        self.streak = 0
        self.warned = False

    def reasons(self, diagnostics: dict[str, float]) -> list[str]:
        """Which collapse criteria ``diagnostics`` meets (the first call records the reference ranks)."""
        found = []
        for name in ("student_rank", "target_rank"):
            if name not in diagnostics:
                continue
            value = diagnostics[name]
            reference = self.first.setdefault(name, value)
            if value < MIN_RANK or value < RANK_RATIO * reference:
                found.append(f"{name} {value:.1f} (first logged {reference:.1f})")
        if "teacher_prototypes" in diagnostics:
            if diagnostics["teacher_prototypes"] <= MIN_PROTOTYPES or diagnostics["teacher_batch_entropy"] < math.log(MIN_PROTOTYPES):
                found.append(
                    f"the teacher uses {diagnostics['teacher_prototypes']} prototypes "
                    f"(batch-mean entropy {diagnostics['teacher_batch_entropy']:.2f} nats)"
                )
            if self.num_prototypes and diagnostics["teacher_entropy"] > UNIFORM_RATIO * math.log(self.num_prototypes):
                found.append(
                    f"teacher entropy {diagnostics['teacher_entropy']:.2f} of ln K = {math.log(self.num_prototypes):.2f} nats"
                )
        return found

    def update(self, step: int, diagnostics: dict[str, float]) -> str | None:
        """Record one logged step; returns (and warns) the collapse message the first time it is due."""
        found = self.reasons(diagnostics)
        self.streak = self.streak + 1 if found else 0
        if self.warned or self.streak < self.patience:
            return None
        self.warned = True
        message = (
            f"step {step}: the distillation looks collapsed for {self.patience} logged steps: "
            + "; ".join(found)
            + ". A falling loss here is not learning (see snd_hf/training/diagnostics.py)."
        )
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return message
