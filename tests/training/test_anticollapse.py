"""Options of the objective: DINOv2's guards against collapse (Sinkhorn-Knopp centring, KoLeo) and InfoNCE's segment negatives."""

from __future__ import annotations

import math

import pytest
import torch

from snd_hf.training import TrainingConfig
import torch.nn.functional as F

from snd_hf.training.loss import info_nce_loss, koleo_loss, sinkhorn_knopp, soft_cross_entropy


def swav_reference(logits: torch.Tensor, temperature: float, iterations: int) -> torch.Tensor:
    """SwAV / DINOv2's formulation, in float64: Q = exp(s / T)ᵀ scaled to sum 1, then rows / K and columns / B, ×B."""
    q = torch.exp(logits.double() / temperature).T  # [K, B]
    q /= q.sum()
    prototypes, batch = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= batch
    return (q * batch).T


def test_sinkhorn_knopp_matches_swav_and_ignores_uncovered_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 16) * 3.0  # [B, V, N, K]
    covered = torch.rand(2, 3, 5) > 0.3
    out = sinkhorn_knopp(logits, covered, temperature=0.1, iterations=3)
    expected = swav_reference(logits[covered], 0.1, 3)
    torch.testing.assert_close(out[covered].double(), expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(out[~covered], torch.zeros_like(out[~covered]))
    torch.testing.assert_close(out[covered].sum(-1), torch.ones(int(covered.sum())))


def test_sinkhorn_knopp_spreads_a_collapsed_teacher():
    # Every token puts its mass on prototype 0: a softmax teacher agrees (collapse); Sinkhorn-Knopp,
    # which must give every prototype an equal share, can only answer uniformly.
    logits = torch.zeros(10, 8)
    logits[:, 0] = 2.0
    out = sinkhorn_knopp(logits, torch.ones(10, dtype=torch.bool), temperature=0.04, iterations=3)
    torch.testing.assert_close(out, torch.full((10, 8), 1 / 8))


def test_sinkhorn_knopp_refuses_no_iterations():
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn_knopp(torch.zeros(2, 3), torch.ones(2, dtype=torch.bool), 0.1, 0)


def test_soft_cross_entropy_of_one_hot_targets_is_the_log_loss():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    expected = -(torch.log_softmax(logits, -1) * targets).sum(-1).mean()
    torch.testing.assert_close(soft_cross_entropy(logits, targets), expected)


def test_koleo_is_minus_the_mean_log_nearest_neighbour_distance():
    # Three unit vectors: e1, e2 and (e1 + e2)/√2. Nearest distances: e1 and e2 to the diagonal
    # 2 sin(π/8) each, the diagonal to either the same.
    points = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [3.0, 3.0, 0.0]])  # unnormalised on purpose
    tokens = points.T.reshape(1, 1, 3, 1, 3)  # [B, V, C, h, w]
    expected = -math.log(2 * math.sin(math.pi / 8))
    assert koleo_loss(tokens).item() == pytest.approx(expected, rel=1e-6)
    covered = torch.tensor([True, True, False]).reshape(1, 1, 1, 3)
    assert koleo_loss(tokens, covered).item() == pytest.approx(-math.log(math.sqrt(2)), rel=1e-6)
    lonely = koleo_loss(tokens.requires_grad_(), torch.tensor([True, False, False]).reshape(1, 1, 1, 3))
    assert lonely.item() == 0.0 and lonely.requires_grad


def test_koleo_gradient_pushes_nearest_neighbours_apart():
    tokens = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]]).T.reshape(1, 1, 2, 1, 3).requires_grad_()
    koleo_loss(tokens).backward()
    moved = tokens.detach() - 0.1 * tokens.grad
    assert koleo_loss(moved).item() < koleo_loss(tokens.detach()).item()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"loss": "info_nce", "sinkhorn_iterations": 3}, "dino_head"),
        ({"loss": "dino_head", "sinkhorn_iterations": -1}, ">= 0"),
        ({"loss": "dino_head", "sinkhorn_iterations": 3, "center_momentum": 0.9}, "one of them"),
        ({"koleo_weight": float("nan")}, "koleo_weight"),
        ({"koleo_weight": -0.1}, "koleo_weight"),
        ({"loss": "cosine", "same_segment_negatives": False}, "info_nce"),
    ],
)
def test_config_refuses_inconsistent_guards(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**settings).validate()


def test_info_nce_leaves_a_tokens_own_segment_out_of_its_negatives():
    torch.manual_seed(0)
    student, target = torch.randn(1, 2, 4, 1, 3), torch.randn(1, 2, 4, 1, 3)  # [B, V, C, h, w]: 6 tokens
    segments = torch.tensor([[[[5, 5, 7]], [[5, 9, 9]]]])  # view 0: tokens 0, 1 share segment 5; view 1: tokens 4, 5 share 9
    covered = torch.tensor([[[[True, True, True]], [[True, True, False]]]])
    out = info_nce_loss(student, target, covered, temperature=0.5, segments=segments)

    queries = F.normalize(student.movedim(2, -1).reshape(6, 4), dim=-1)
    keys = F.normalize(target.movedim(2, -1).reshape(6, 4), dim=-1)
    kept = [0, 1, 2, 3, 4]  # token 5 is uncovered
    left_out = {0: {1}, 1: {0}}  # the same segment in the same view; token 3 (segment 5 of view 1) stays a negative
    losses = []
    for i in kept:
        candidates = [j for j in kept if j not in left_out.get(i, set())]
        logits = torch.stack([queries[i] @ keys[j] for j in candidates]) / 0.5
        losses.append(-torch.log_softmax(logits, 0)[candidates.index(i)])
    torch.testing.assert_close(out, torch.stack(losses).mean())
    assert info_nce_loss(student, target, covered, temperature=0.5) > 0  # without segments: a different value
    assert not torch.isclose(info_nce_loss(student, target, covered, temperature=0.5), out)
