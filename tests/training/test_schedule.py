"""The learning-rate schedule: OneCycleLR's values wherever torch defines them, valid everywhere."""

from __future__ import annotations

import itertools

import pytest
import torch

from snd_hf.training.schedule import SPARE_STEPS, one_cycle_factor, one_cycle_schedule

MAX_LR = 1e-3


def _rates(scheduler_factory, steps: int) -> list[float]:
    """The rate of each of ``steps`` optimizer steps under a scheduler built by ``scheduler_factory``."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=MAX_LR)
    scheduler = scheduler_factory(optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def _torch_one_cycle(max_steps: int, warmup_ratio: float):
    return lambda optimizer: torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=MAX_LR, total_steps=max_steps + SPARE_STEPS, pct_start=warmup_ratio,
        anneal_strategy="cos", cycle_momentum=False,
    )  # fmt: skip


# max_steps x warmup_ratio, including the cases that broke training: warm-up of exactly one step
# (OneCycleLR divides by zero: 40 steps on 2 processes with the old per-process count, 90 steps
# on one) and shorter than one step.
GRID = list(itertools.product([1, 2, 5, 40, 90, 300], [0.0, 0.005, 0.01, 0.02, 0.1, 0.5, 0.99, 1.0]))


@pytest.mark.parametrize(("max_steps", "warmup_ratio"), GRID)
def test_schedule_is_valid_and_equals_one_cycle_where_torch_defines_it(max_steps, warmup_ratio):
    rates = _rates(lambda optimizer: one_cycle_schedule(optimizer, max_steps, warmup_ratio), max_steps)
    assert all(0 < rate <= MAX_LR for rate in rates), rates
    warmup_steps = warmup_ratio * (max_steps + SPARE_STEPS)
    if warmup_steps > 1:  # OneCycleLR is defined: same rates
        expected = _rates(_torch_one_cycle(max_steps, warmup_ratio), max_steps)
        torch.testing.assert_close(torch.tensor(rates, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    else:  # no whole warm-up step: the cosine decay starts at the peak
        assert rates[0] == MAX_LR
        assert all(later <= earlier for earlier, later in zip(rates, rates[1:]))


def test_torch_one_cycle_fails_where_ours_does_not():
    # 90 steps: total 100, warm-up 0.01 * 100 = one step -> OneCycleLR's phase has zero length.
    with pytest.raises(ZeroDivisionError):
        _rates(_torch_one_cycle(90, 0.01), 3)
    assert _rates(lambda optimizer: one_cycle_schedule(optimizer, 90, 0.01), 3)[0] == MAX_LR


def test_factor_values_and_bad_arguments():
    # 10 steps, warm-up 0.5: peak at step 4 (OneCycleLR's pct_start * total - 1), final 1 / (25 * 1e4).
    assert one_cycle_factor(0, 10, 0.5) == pytest.approx(1 / 25)
    assert one_cycle_factor(4, 10, 0.5) == pytest.approx(1.0)
    assert one_cycle_factor(9, 10, 0.5) == pytest.approx(1 / 25 / 1e4)
    assert one_cycle_factor(50, 10, 0.5) == one_cycle_factor(9, 10, 0.5)  # past the cycle: the final rate
    with pytest.raises(ValueError, match="warmup_ratio must be in"):
        one_cycle_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 10, 1.5)
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        one_cycle_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 0, 0.1)
