"""Surface-normal probe (Probe3D, as SnD ran it): upsampled dense tokens → normal + concentration.

The last-layer dense tokens (before the final norm) are upsampled 4x bilinearly and a 1x1
convolution predicts four numbers per pixel: an unnormalised normal and a concentration κ of an
angular von Mises–Fisher-like distribution. Training minimises the uncertainty-aware angular loss
of Bae et al. (ICCV 2021): ``-log(κ² + 1) + κ · θ + log(1 + exp(-κπ))``, θ the angular error.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NormalProbe", "normal_uncertainty_loss"]

_MIN_KAPPA = 0.01


class NormalProbe(nn.Module):
    """Linear surface-normal head with a per-pixel concentration.

    Args:
        channels: dense-token channels C.
        upsample: factor from the patch grid to the prediction grid.
    """

    def __init__(self, channels: int, upsample: int = 4):
        super().__init__()
        self.upsample = upsample
        self.conv = nn.Conv2d(channels, 4, kernel_size=1)

    def forward(self, dense_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict unit normals and their concentration.

        Args:
            dense_tokens: frozen dense tokens. [B, C, h, w]

        Returns:
            normals: unit normals in the camera frame. [B, 3, upsample·h, upsample·w]
            kappa: concentration, > 0. [B, upsample·h, upsample·w]
        """
        # conv∘upsample == upsample∘conv for a 1x1 convolution; the cheaper order is used.
        output = F.interpolate(self.conv(dense_tokens), scale_factor=self.upsample, mode="bilinear", align_corners=False)
        normals = output[:, :3] / (output[:, :3].norm(dim=1, keepdim=True) + 1e-10)
        kappa = F.elu(output[:, 3]) + 1.0 + _MIN_KAPPA
        return normals, kappa


def normal_uncertainty_loss(
    normals: torch.Tensor, kappa: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Uncertainty-aware angular loss, averaged over valid pixels.

    Predictions are resized bilinearly to the target grid (and renormalised); pixels whose cosine
    to the target is within 1e-3 of ±1 are skipped, as the acos gradient explodes there.

    Args:
        normals: predicted unit normals. [B, 3, h, w]
        kappa: predicted concentration. [B, h, w]
        target: ground-truth unit normals. [B, 3, H, W]
        valid: pixels with ground truth. [B, H, W]

    Returns:
        scalar loss.
    """
    if normals.shape[-2:] != target.shape[-2:]:
        normals = F.interpolate(normals, size=target.shape[-2:], mode="bilinear", align_corners=False)
        normals = normals / (normals.norm(dim=1, keepdim=True) + 1e-10)
        kappa = F.interpolate(kappa[:, None], size=target.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cosine = (normals * target).sum(dim=1)
    keep = valid & (cosine.abs() < 0.999)
    if not bool(keep.any()):
        return normals.sum() * 0.0
    cosine, kappa = cosine[keep], kappa[keep]
    loss = -torch.log(kappa**2 + 1.0) + kappa * torch.acos(cosine) + torch.log(1.0 + torch.exp(-kappa * math.pi))
    return loss.mean()
