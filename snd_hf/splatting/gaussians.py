"""The Gaussians type shared by the lifters and the renderer."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Gaussians:
    """A batch of 3D Gaussians, ordered ``b (v h w)`` when a lifter made them (one per context pixel).

    Attributes:
        means: world-space centres. [B, G, 3]
        covariances: world-space covariance matrices (σ², symmetric positive semi-definite). [B, G, 3, 3]
        opacities: opacity in [0, 1]. [B, G]
        features: per-Gaussian features to render, or None before they are attached. [B, G, C]
    """

    means: torch.Tensor
    covariances: torch.Tensor
    opacities: torch.Tensor
    features: torch.Tensor | None = None

    def __post_init__(self) -> None:
        batch, count = self.means.shape[:2]
        expected = {
            "means": (self.means, (batch, count, 3)),
            "covariances": (self.covariances, (batch, count, 3, 3)),
            "opacities": (self.opacities, (batch, count)),
        }
        if self.features is not None:
            expected["features"] = (self.features, (batch, count, self.features.shape[-1]))
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"Gaussians.{name} must have shape {list(shape)}, got {list(tensor.shape)}.")

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[1]

    def with_features(self, features: torch.Tensor) -> Gaussians:
        """A copy carrying ``features`` [B, G, C]."""
        return replace(self, features=features)
