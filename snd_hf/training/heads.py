"""The DINO projection head SnD puts on top of the student's and the teacher's patch features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DINOHead(nn.Module):
    """MLP ``dim → hidden → hidden → bottleneck`` (GELU), L2-normalisation, then prototypes.

    The prototype layer is DINO's weight-normalised linear layer without bias whose gain
    ``weight_g`` is fixed to 1: each prototype row is used L2-normalised, so only its direction
    is learnt (``prototypes`` here holds DINO's ``weight_v``).

    ``center`` [K] is DINO's running mean of the teacher's logits (a buffer: it travels with the
    teacher's state and is never trained); only the teacher's copy is used and updated, and only
    when centring is on (``TrainingConfig.center_momentum``).

    Args:
        in_dim: channels of the incoming features (the ViT width).
        hidden_dim: MLP width (2048 in SnD).
        bottleneck_dim: width before the prototypes (256 in SnD).
        num_prototypes: number of prototypes, the softmax size (65536 in SnD).
        num_layers: number of linear layers in the MLP (3 in SnD).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_prototypes: int = 65536,
        num_layers: int = 3,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, bottleneck_dim))
        self.register_buffer("center", torch.zeros(num_prototypes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # DINO: truncated normal (std 0.02) for the MLP, zero biases; the prototypes keep
        # nn.Linear's default init (their norm does not matter).
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.kaiming_uniform_(self.prototypes, a=5**0.5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits over the prototypes.

        Args:
            features: token features. [..., C]

        Returns:
            Logits, one per prototype. [..., K]
        """
        if features.shape[-1] != self.mlp[0].in_features:
            raise ValueError(
                f"features must have {self.mlp[0].in_features} channels in the last dim, got shape {list(features.shape)}."
            )
        embedding = F.normalize(self.mlp(features), dim=-1)
        return F.linear(embedding, F.normalize(self.prototypes, dim=-1))
