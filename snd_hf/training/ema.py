"""The teacher as an exponential moving average (EMA) of the student."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student`` in eval mode, to be updated by :func:`ema_update`.

    Deviation: the original leaves its teacher in train mode, so LoRA dropout is active in the
    teacher; ours runs in eval mode (deterministic targets).
    """
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``t ← momentum · t + (1 − momentum) · s`` for every parameter the student trains.

    Parameters the student does not train are equal in both by construction (the teacher starts
    as a copy), so skipping them gives the same result as updating all of them, at a fraction of
    the cost. Both modules must have the same parameter names (unwrap DDP first).

    Args:
        teacher: the EMA copy, updated in place.
        student: the trained module.
        momentum: weight of the teacher's current value, in [0, 1].
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}.")
    teacher_params = dict(teacher.named_parameters())
    pairs = [(teacher_params[name], param) for name, param in student.named_parameters() if param.requires_grad]
    if len(pairs) == 0:
        return
    missing = [name for name, param in student.named_parameters() if param.requires_grad and name not in teacher_params]
    if missing:
        raise ValueError(f"teacher lacks the student's trained parameters {missing[:5]}.")
    teacher_values = [t for t, _ in pairs]
    torch._foreach_mul_(teacher_values, momentum)
    torch._foreach_add_(teacher_values, [s.detach().to(t.dtype) for t, s in pairs], alpha=1.0 - momentum)
