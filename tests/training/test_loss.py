"""The distillation losses over covered tokens: cross-entropy, cosine, MSE, InfoNCE, DINO centring."""

from __future__ import annotations

import math

import pytest
import torch

from snd_hf.training import (
    distillation_loss,
)
from snd_hf.training.loss import (
    cosine_loss,
    info_nce_loss,
    mse_loss,
    teacher_probabilities,
    teacher_temperature,
    update_center,
)


def test_loss_is_cross_entropy_over_covered_tokens():
    student = torch.randn(2, 5, 7)
    teacher = torch.randn(2, 5, 7)
    covered = torch.tensor([[True, False, True, True, False], [False, False, True, False, False]])
    per_token = -(teacher.softmax(-1) * student.log_softmax(-1)).sum(-1)
    torch.testing.assert_close(distillation_loss(student, teacher, covered), per_token[covered].mean())
    torch.testing.assert_close(distillation_loss(student, teacher), per_token.mean())
    # Uniform student over K prototypes: the loss is ln K whatever the teacher says.
    assert math.isclose(distillation_loss(torch.zeros(3, 65536), teacher.new_zeros(3, 65536).normal_()).item(), math.log(65536), rel_tol=1e-6)
    nothing = distillation_loss(student.requires_grad_(), teacher, torch.zeros(2, 5, dtype=torch.bool))
    assert nothing.item() == 0.0
    nothing.backward()  # still attached to the graph
    assert torch.count_nonzero(student.grad) == 0


def test_cosine_and_mse_losses_over_covered_tokens():
    student, target = torch.randn(2, 1, 4, 3, 5), torch.randn(2, 1, 4, 3, 5)
    covered = torch.rand(2, 1, 3, 5) > 0.4
    cosine = 1 - torch.nn.functional.cosine_similarity(student, target, dim=2)
    torch.testing.assert_close(cosine_loss(student, target, covered), cosine[covered].mean())
    torch.testing.assert_close(mse_loss(student, target, covered), ((student - target) ** 2).mean(2)[covered].mean())
    assert cosine_loss(target * 3.0, target).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    with pytest.raises(ValueError, match="same shape"):
        cosine_loss(student, target[..., :4])


def test_info_nce_picks_each_token_target_among_the_covered():
    # Orthonormal targets and a student equal to them: every positive logit is 1/τ, every negative 0.
    target = torch.eye(6).view(1, 6, 6, 1, 1)  # [B, V, C, h, w]: view v's one token is e_v
    loss = info_nce_loss(target.clone(), target, temperature=0.5)
    assert loss.item() == pytest.approx(math.log(1 + 5 * math.exp(-2.0)), rel=1e-6)
    # Only covered tokens are queries and negatives: a direct sum over them.
    student, target = torch.randn(2, 1, 4, 3, 5), torch.randn(2, 1, 4, 3, 5)
    covered = torch.rand(2, 1, 3, 5) > 0.4
    queries = torch.nn.functional.normalize(student.movedim(2, -1)[covered], dim=-1)
    keys = torch.nn.functional.normalize(target.movedim(2, -1)[covered], dim=-1)
    logits = queries @ keys.T / 0.2
    expected = -torch.stack([logits[i].log_softmax(0)[i] for i in range(len(logits))]).mean()
    torch.testing.assert_close(info_nce_loss(student, target, covered), expected)
    # Nothing covered: 0, still in the graph.
    student.requires_grad_(True)
    empty = info_nce_loss(student, target, torch.zeros(2, 1, 3, 5, dtype=torch.bool))
    empty.backward()
    assert empty.item() == 0.0 and torch.count_nonzero(student.grad) == 0


def test_dino_centring_and_temperature_warm_up():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [9.0, 9.0, 9.0]])
    center = torch.zeros(3)
    update_center(center, logits, torch.tensor([True, True, False]), momentum=0.9)
    torch.testing.assert_close(center, 0.1 * torch.tensor([1.0, 1.0, 0.0]))  # the uncovered row is ignored
    probs = teacher_probabilities(logits[:1], 0.5, center)
    torch.testing.assert_close(probs, torch.softmax((logits[:1] - center) / 0.5, dim=-1))
    assert teacher_temperature(0, 0.07, 0.04, 30) == 0.04
    assert teacher_temperature(15, 0.07, 0.04, 30) == pytest.approx(0.055)
    assert teacher_temperature(30, 0.07, 0.04, 30) == teacher_temperature(5, 0.07, None, 30) == 0.07


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="covered must have shape"):
        distillation_loss(torch.randn(2, 3), torch.randn(2, 3), torch.ones(3, dtype=torch.bool))
