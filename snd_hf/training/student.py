"""The module SnD trains: a ViT backbone (SnDModel, optionally LoRA-wrapped) plus its DINO head."""

from __future__ import annotations

import torch
from torch import nn

from .heads import DINOHead


class BackboneWithHead(nn.Module):
    """Backbone + DINO head, one module so that DDP wraps (and syncs) both; the teacher is its copy.

    Args:
        backbone: a module whose output has ``feature_map`` [B, C, h, w] (SnDModel or a PeftModel of one).
        head: the DINO head on the backbone's channels, or None for losses on the backbone tokens.
    """

    def __init__(self, backbone: nn.Module, head: DINOHead | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features of images in [0, 1] (resized down to a multiple of the patch size as SnD does;
        :meth:`snd_hf.SnDModel.image_features`).

        Args:
            images: views. [B, V, 3, H, W]

        Returns:
            Final-norm patch features. [B, V, C, h, w]
        """
        return self.backbone.image_features(images.flatten(0, 1)).feature_map.unflatten(0, images.shape[:2])

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Head logits of a feature grid.

        Args:
            features: patch features. [B, V, C, h, w]

        Returns:
            Prototype logits per token. [B, V, h, w, K]
        """
        if self.head is None:
            raise ValueError("this module has no DINO head (built for a loss on the backbone tokens).")
        return self.head(features.permute(0, 1, 3, 4, 2))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patch features and, with a head, prototype logits of every patch token (one call, so DDP syncs both).

        Args:
            images: views in [0, 1]. [B, V, 3, H, W]

        Returns:
            features [B, V, C, h, w] and logits [B, V, h, w, K] (None without a head).
        """
        features = self.features(images)
        return features, None if self.head is None else self.logits(features)
