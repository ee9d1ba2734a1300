"""Semantic-segmentation probe (DINOv2 / FiT3D linear protocol): a 1x1 convolution on patch tokens.

Logits are upsampled bilinearly to the label resolution and trained with cross-entropy that
skips the ignore index; scores are accumulated over the dataset by ``SegmentationMeter``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegmentationProbe", "segmentation_loss"]


class SegmentationProbe(nn.Module):
    """Linear segmentation head.

    Args:
        channels: patch-feature channels C.
        num_classes: number of classes K.
    """

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, patch_features: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Class logits.

        Args:
            patch_features: frozen patch features. [B, C, h, w]
            size: output ``(H, W)``; the patch grid when None.

        Returns:
            logits. [B, K, H, W]
        """
        logits = self.conv(patch_features)
        if size is not None and tuple(size) != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Cross-entropy over labelled pixels.

    Args:
        logits: class logits at label resolution. [B, K, H, W]
        labels: class ids, ``ignore_index`` where unlabelled. [B, H, W]
        ignore_index: label to skip.

    Returns:
        scalar loss (0 when no pixel is labelled).
    """
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels.long(), ignore_index=ignore_index)
