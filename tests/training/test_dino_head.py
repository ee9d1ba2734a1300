"""The DINO projection head: output shapes and unit-norm prototypes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from snd_hf.training import (
    DINOHead,
)


def test_head_shapes_and_unit_prototypes():
    head = DINOHead(16, hidden_dim=32, bottleneck_dim=8, num_prototypes=20)
    logits = head(torch.randn(2, 3, 16))
    assert logits.shape == (2, 3, 20)
    # Cosine similarities between unit vectors: within [-1, 1]; rescaling prototypes changes nothing
    # (DINO's weight_g fixed at 1).
    features = torch.randn(4, 16)
    before = head(features)
    assert before.abs().max() <= 1.0 + 1e-6
    with torch.no_grad():
        head.prototypes.mul_(torch.rand(20, 1) * 5 + 0.1)
    torch.testing.assert_close(head(features), before)
    assert [type(m) for m in head.mlp] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    with pytest.raises(ValueError, match="16 channels"):
        head(torch.randn(4, 15))
