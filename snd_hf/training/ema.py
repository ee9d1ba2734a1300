"""The teacher as an exponential moving average (EMA) of the student."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student`` in eval mode, to be updated by :class:`ParameterEMA`.

    Deviation: the original leaves its teacher in train mode, so LoRA dropout is active in the
    teacher; ours runs in eval mode (deterministic targets).
    """
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.eval()


class ParameterEMA:
    """``t ← momentum · t + (1 − momentum) · s`` for every parameter the student trains.

    The teacher's parameters are paired with the student's once, here: pairing them by name every
    step cost most of the update at the tiny recipe (benchmarks/bench_train.py). The pairs
    hold the parameter tensors themselves, so build this after the modules are moved to their device
    (``accelerator.prepare`` keeps a module's parameter objects; loading a checkpoint copies into them).

    Parameters the student does not train are equal in both by construction (the teacher starts as
    a copy), so skipping them gives the same result as updating all of them, at a fraction of the cost.

    Args:
        teacher: the EMA copy, updated in place.
        student: the trained module, with the same parameter names (unwrap DDP first).

    Raises:
        ValueError: the teacher lacks a parameter the student trains, or holds it in another dtype or shape.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        teacher_params = dict(teacher.named_parameters())
        trained = [(name, param) for name, param in student.named_parameters() if param.requires_grad]
        missing = [name for name, _ in trained if name not in teacher_params]
        if missing:
            raise ValueError(f"teacher lacks the student's trained parameters {missing[:5]}.")
        unlike = [
            name
            for name, param in trained
            if (teacher_params[name].dtype, teacher_params[name].shape) != (param.dtype, param.shape)
        ]
        if unlike:
            raise ValueError(f"teacher and student hold {unlike[:5]} in different dtypes or shapes.")
        self.teacher_values = [teacher_params[name] for name, _ in trained]
        self.student_values = [param for _, param in trained]

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        """Move the teacher towards the student; ``momentum`` in [0, 1] is the weight of its current value."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}.")
        if self.teacher_values:
            torch._foreach_mul_(self.teacher_values, momentum)
            torch._foreach_add_(self.teacher_values, self.student_values, alpha=1.0 - momentum)


def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """One :meth:`ParameterEMA.update` of ``teacher`` towards ``student`` (pairing them anew; a loop
    keeps one :class:`ParameterEMA`)."""
    ParameterEMA(teacher, student).update(momentum)
