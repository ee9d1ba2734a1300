"""Collapse diagnostics: exact values on analytic inputs, and a tiny run that collapses is flagged while a healthy one is not."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from snd_hf.training.diagnostics import (
    CollapseMonitor,
    effective_rank,
    entropy,
    step_diagnostics,
)
from snd_hf.training.ema import ema_update
from snd_hf.training.heads import DINOHead
from snd_hf.training.loss import distillation_loss, teacher_probabilities, update_center


def test_effective_rank_of_analytic_matrices():
    assert effective_rank(torch.eye(6)) == pytest.approx(6.0)  # equal singular values: full rank
    assert effective_rank(torch.ones(10, 4)) == pytest.approx(1.0)  # one direction
    # Singular values (3, 1): exp of the entropy of (0.75, 0.25).
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(expected)
    assert effective_rank(torch.zeros(5, 3)) == 1.0


def test_step_diagnostics_count_only_covered_tokens():
    features = torch.zeros(1, 1, 4, 2, 2)
    features[0, 0, :, 0, 0] = torch.tensor([1.0, 0, 0, 0])
    features[0, 0, :, 0, 1] = torch.tensor([0, 1.0, 0, 0])
    features[0, 0, :, 1, :] = 5.0  # uncovered: would add a third direction
    coverage = torch.tensor([[[[True, True], [False, False]]]])
    probs = torch.zeros(1, 1, 2, 2, 3)
    probs[..., 0, 0, :] = torch.tensor([1.0, 0.0, 0.0])
    probs[..., 0, 1, :] = torch.tensor([0.0, 0.5, 0.5])
    probs[..., 1, :, :] = torch.tensor([0.0, 0.0, 1.0])
    values = step_diagnostics(coverage, features, features, probs)
    assert values["coverage"] == 0.5
    assert values["student_rank"] == pytest.approx(2.0) and values["target_rank"] == pytest.approx(2.0)
    assert values["teacher_entropy"] == pytest.approx(0.5 * math.log(2))  # mean of 0 and ln 2
    assert values["teacher_batch_entropy"] == pytest.approx(entropy(torch.tensor([0.5, 0.25, 0.25])).item())
    assert values["teacher_prototypes"] == 2  # argmax 0 and 1 (ties go to the first)


def _tiny_dino_run(center_momentum: float | None, steps: int = 40) -> list[str | None]:
    """A DINO-head distillation on random tokens: student sees noisy inputs, EMA teacher (0.99 every step).

    With DINO's temperatures (0.04 / 0.1) and no centring, the teacher sharpens onto a couple of
    prototypes within a few steps; with centring (0.9) it keeps using many.
    """
    torch.manual_seed(0)
    student = nn.ModuleDict({
        "backbone": nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32)),
        "head": DINOHead(32, hidden_dim=64, bottleneck_dim=16, num_prototypes=64),
    })  # fmt: skip
    teacher = copy.deepcopy(student).requires_grad_(False)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    monitor = CollapseMonitor(num_prototypes=64)
    generator = torch.Generator().manual_seed(1)
    coverage = torch.ones(2, 1, 6, 8, dtype=torch.bool)
    messages = []
    for step in range(steps):
        tokens = torch.randn(2, 1, 6, 8, 16, generator=generator)  # [B, V, h, w, D]
        student_features = student["backbone"](tokens + 0.3 * torch.randn(tokens.shape, generator=generator))
        with torch.no_grad():
            teacher_features = teacher["backbone"](tokens)
            teacher_logits = teacher["head"](teacher_features)
        center = teacher["head"].center if center_momentum is not None else None
        loss = distillation_loss(
            student["head"](student_features), teacher_logits, coverage, student_temp=0.1, teacher_temp=0.04, center=center
        )
        probs = teacher_probabilities(teacher_logits, 0.04, center)
        if center is not None:
            update_center(center, teacher_logits, coverage, center_momentum)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema_update(teacher, student, 0.99)
        diagnostics = step_diagnostics(coverage, student_features.detach().movedim(-1, 2), teacher_features.movedim(-1, 2), probs)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            messages.append(monitor.update(step, diagnostics))
    return messages


def test_a_collapsing_dino_run_is_flagged_once():
    messages = _tiny_dino_run(center_momentum=None)
    flagged = [m for m in messages if m is not None]
    assert len(flagged) == 1  # warned once, not every step
    assert "prototypes" in flagged[0] and "collapsed" in flagged[0]


def test_a_centred_dino_run_is_not_flagged():
    assert all(m is None for m in _tiny_dino_run(center_momentum=0.9))


def test_rank_collapse_and_uniform_teacher_are_flagged():
    monitor = CollapseMonitor(num_prototypes=512, patience=3)
    healthy = {"student_rank": 40.0, "target_rank": 40.0}
    for step in range(5):
        assert monitor.update(step, healthy) is None
    assert monitor.reasons({"student_rank": 10.0, "target_rank": 40.0})  # 0.25 of the first value
    with pytest.warns(RuntimeWarning, match="student_rank 8.9"):
        for step in range(5, 8):
            message = monitor.update(step, {"student_rank": 8.9, "target_rank": 40.0})
    assert message is not None
    uniform = {"teacher_entropy": 0.99 * math.log(512), "teacher_batch_entropy": math.log(512), "teacher_prototypes": 300}
    assert any("ln K" in reason for reason in CollapseMonitor(512).reasons(uniform))
