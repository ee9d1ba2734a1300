"""The EMA teacher: the update formula, frozen parameters, and the in-place `ParameterEMA`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from snd_hf.training import (
    ParameterEMA,
    ema_update,
    make_ema_teacher,
)


def test_ema_update_matches_formula_and_skips_frozen():
    student = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    student[0].requires_grad_(False)
    teacher = make_ema_teacher(student)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update(teacher, student, momentum=0.9)
    after = teacher.state_dict()
    torch.testing.assert_close(after["1.weight"], 0.9 * before["1.weight"] + 0.1 * student[1].weight)
    torch.testing.assert_close(after["0.weight"], before["0.weight"])  # frozen: untouched
    ema_update(teacher, student, momentum=0.0)
    torch.testing.assert_close(teacher[1].bias, student[1].bias)



def test_parameter_ema_follows_the_student_in_place_and_equals_ema_update():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    student[0].requires_grad_(False)
    paired, fresh = make_ema_teacher(student), make_ema_teacher(student)
    ema = ParameterEMA(paired, student)
    optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):  # the pairs see the student's in-place updates
        student(torch.randn(5, 3)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update(0.8)
        ema_update(fresh, student, 0.8)
    for name, value in fresh.state_dict().items():
        assert torch.equal(paired.state_dict()[name], value), name
    assert not torch.equal(paired[1].weight, student[1].weight)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        ema.update(1.5)
    with pytest.raises(ValueError, match="different dtypes or shapes"):
        ParameterEMA(make_ema_teacher(student).double(), student)
    with pytest.raises(ValueError, match="lacks the student's trained parameters"):
        ParameterEMA(nn.Sequential(nn.Linear(3, 4)), student)
