"""The learning-rate schedule: the original's one-cycle cosine, as a function of the optimizer step.

The original steps ``torch.optim.lr_scheduler.OneCycleLR(total_steps=max_steps + 10, pct_start=0.01,
anneal_strategy="cos", cycle_momentum=False)`` once per optimizer step (ORIGINAL.md, "Optimisation"):
a cosine warm-up from ``max_lr / 25`` to ``max_lr`` over ``pct_start * total_steps - 1`` steps, then
a cosine decay to ``max_lr / 25 / 1e4`` at step ``total_steps - 1``.

Here the rate is a pure function of the optimizer step (:func:`one_cycle_factor`), stepped by the
training loop once per optimizer step: the number of processes and gradient accumulation cannot
change it (accelerate's prepared scheduler steps once per process instead).
"""

from __future__ import annotations

import math

import torch

# OneCycleLR's defaults, which the original keeps.
DIV_FACTOR = 25.0  # initial rate = max_lr / DIV_FACTOR
FINAL_DIV_FACTOR = 1e4  # final rate = initial rate / FINAL_DIV_FACTOR
SPARE_STEPS = 10  # the original schedules max_steps + 10 steps


def _cosine(start: float, end: float, fraction: float) -> float:
    """From ``start`` (fraction 0) to ``end`` (fraction 1) along half a cosine."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1.0)


def one_cycle_factor(step: int, total_steps: int, warmup_ratio: float) -> float:
    """The rate of optimizer step ``step`` (0-based) as a fraction of ``max_lr``.

    Equal to OneCycleLR's (cosine annealing, no momentum cycling, default div factors) wherever
    OneCycleLR is defined, that is when the warm-up spans more than one step
    (``warmup_ratio * total_steps > 1``).

    Deviation: with a shorter warm-up, OneCycleLR divides by zero (exactly one step) or starts
    part-way down its decay (less than one); here there is no warm-up and the decay starts at
    ``max_lr`` on step 0.

    Args:
        step: the optimizer step; steps past ``total_steps - 1`` keep the final rate.
        total_steps: the length of the cycle (>= 2).
        warmup_ratio: the fraction of the cycle spent warming up, in [0, 1].

    Returns:
        A factor in [1 / (DIV_FACTOR * FINAL_DIV_FACTOR), 1].
    """
    if total_steps < 2:
        raise ValueError(f"total_steps must be >= 2, got {total_steps}.")
    if not 0.0 <= warmup_ratio <= 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1], got {warmup_ratio}.")
    initial, final = 1.0 / DIV_FACTOR, 1.0 / (DIV_FACTOR * FINAL_DIV_FACTOR)
    last = total_steps - 1
    step = min(max(step, 0), last)
    peak = warmup_ratio * total_steps - 1  # OneCycleLR's end of the warm-up phase
    if peak > 0 and step <= peak:
        return _cosine(initial, 1.0, step / peak)
    peak = max(peak, 0.0)
    return _cosine(1.0, final, (step - peak) / (last - peak))


def one_cycle_schedule(
    optimizer: torch.optim.Optimizer, max_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """The original's schedule over ``max_steps + 10`` steps, for an optimizer whose rate is ``max_lr``.

    Step the returned scheduler once per optimizer step that was taken (not per process or per
    accumulated micro-batch).

    Args:
        optimizer: its param groups' ``lr`` is the peak rate.
        max_steps: the run's optimizer steps (>= 1).
        warmup_ratio: OneCycleLR's ``pct_start``, in [0, 1].

    Raises:
        ValueError: ``max_steps`` < 1 or ``warmup_ratio`` outside [0, 1].
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
    total_steps = max_steps + SPARE_STEPS
    one_cycle_factor(0, total_steps, warmup_ratio)  # validates before the scheduler takes its first step
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: one_cycle_factor(step, total_steps, warmup_ratio)
    )
