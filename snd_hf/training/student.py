"""The module SnD trains: a ViT backbone (SnDModel, optionally LoRA-wrapped) plus its DINO head."""

from __future__ import annotations

import torch
from torch import nn

from ..splatting.teacher import patch_features
from .heads import DINOHead


class BackboneWithHead(nn.Module):
    """Backbone + DINO head, one module so that DDP wraps (and syncs) both; the teacher is its EMA copy.

    Args:
        backbone: a module whose output has ``feature_map`` [B, C, h, w] (SnDModel or a PeftModel of one).
        head: the DINO head on the backbone's channels.
    """

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features of images in [0, 1] (resized to a multiple of 14 as SnD does).

        Args:
            images: views. [B, V, 3, H, W]

        Returns:
            Final-norm patch features. [B, V, C, h, w]
        """
        return patch_features(self.backbone, images)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Head logits of a feature grid.

        Args:
            features: patch features. [B, V, C, h, w]

        Returns:
            Prototype logits per token. [B, V, h, w, K]
        """
        return self.head(features.permute(0, 1, 3, 4, 2))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Prototype logits of every patch token of ``images`` [B, V, 3, H, W]; returns [B, V, h, w, K]."""
        return self.logits(self.features(images))
