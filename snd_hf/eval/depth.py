"""Monocular depth probe (FiT3D / DINOv2 linear protocol): classification–regression over bins.

The frozen last-layer patch tokens, concatenated with the CLS token broadcast to every patch,
go through one 1x1 convolution to ``num_bins`` logits on a grid upsampled 4x; the logits are
made positive (ReLU + 0.1), normalised to weights, and the depth is the weighted sum of
uniformly spaced bin centres. Training minimises SigLoss + 0.5 · gradient loss against the
ground truth at its own resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DepthProbe", "depth_probe_loss", "gradient_loss", "sig_loss"]

# Offset inside the logarithms of both losses (DINOv2 / FiT3D depth losses).
_LOG_EPS = 1e-3


class DepthProbe(nn.Module):
    """Linear depth head with uniform bins and linear normalisation.

    Args:
        channels: patch-feature channels C.
        cls_channels: CLS-token channels appended to every patch (0 for none).
        min_depth, max_depth: range of the uniform bin centres.
        num_bins: number of depth bins.
        upsample: factor from the patch grid to the prediction grid.
    """

    def __init__(
        self,
        channels: int,
        cls_channels: int = 0,
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        num_bins: int = 256,
        upsample: int = 4,
    ):
        super().__init__()
        self.cls_channels = cls_channels
        self.upsample = upsample
        self.conv = nn.Conv2d(channels + cls_channels, num_bins, kernel_size=1)
        self.register_buffer("bin_centers", torch.linspace(min_depth, max_depth, num_bins), persistent=False)

    def forward(self, patch_features: torch.Tensor, cls_token: torch.Tensor | None = None) -> torch.Tensor:
        """Predict depth.

        Args:
            patch_features: frozen patch features. [B, C, h, w]
            cls_token: frozen CLS token, required when ``cls_channels > 0``. [B, C_cls]

        Returns:
            depth on the upsampled grid. [B, upsample·h, upsample·w]
        """
        if self.cls_channels:
            if cls_token is None or cls_token.shape[-1] != self.cls_channels:
                got = None if cls_token is None else tuple(cls_token.shape)
                raise ValueError(f"cls_token must be [B, {self.cls_channels}], got {got}")
            height, width = patch_features.shape[-2:]
            patch_features = torch.cat([patch_features, cls_token[:, :, None, None].expand(-1, -1, height, width)], 1)
        # A 1x1 convolution commutes with bilinear upsampling (weights sum to one), so the logits
        # are computed on the patch grid and upsampled: the same numbers at a fraction of the cost.
        logits = F.interpolate(self.conv(patch_features), scale_factor=self.upsample, mode="bilinear", align_corners=False)
        weights = torch.relu(logits) + 0.1
        weights = weights / weights.sum(dim=1, keepdim=True)
        return torch.einsum("bkhw,k->bhw", weights, self.bin_centers)


def sig_loss(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, warm_up: bool = False) -> torch.Tensor:
    """Scale-invariant log loss ``sqrt(Var(g) + 0.15 · mean(g)²)``, ``g = log(p + ε) - log(t + ε)``.

    During warm-up only the mean term is used (the original's first 100 iterations).

    Args:
        prediction: predicted depth. [B, H, W]
        target: ground-truth depth. [B, H, W]
        valid: pixels with valid ground truth, pooled over the batch. [B, H, W]
        warm_up: use the warm-up form.

    Returns:
        scalar loss.
    """
    g = torch.log(prediction[valid] + _LOG_EPS) - torch.log(target[valid] + _LOG_EPS)
    mean_term = 0.15 * g.mean() ** 2
    return torch.sqrt(mean_term if warm_up else g.var() + mean_term)


def gradient_loss(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, scales: int = 4) -> torch.Tensor:
    """Multi-scale gradient-matching loss on log depth (MegaDepth), averaged over images.

    At strides 1, 2, 4, 6 the absolute differences of the log-depth error between pixels two
    apart (vertically and horizontally, both valid) are summed and divided by the number of
    valid pixels at that stride.

    Deviation: the original slices a squeezed [B, H, W] batch as [::s, ::s], i.e. along batch and
    rows; we subsample the rows and columns of every image (docs/deviations.md, 13).

    Args:
        prediction: predicted depth. [B, H, W]
        target: ground-truth depth. [B, H, W]
        valid: pixels with valid ground truth. [B, H, W]
        scales: number of strides (1, then 2, 4, 6, ...).

    Returns:
        scalar loss.
    """
    log_error = (torch.log(prediction + _LOG_EPS) - torch.log(target.clamp_min(0) + _LOG_EPS)) * valid
    mask = valid.to(prediction.dtype)
    total = prediction.new_zeros(())
    for scale in range(scales):
        stride = 1 if scale == 0 else 2 * scale
        error, keep = log_error[:, ::stride, ::stride], mask[:, ::stride, ::stride]
        vertical = (error[:, :-2] - error[:, 2:]).abs() * keep[:, :-2] * keep[:, 2:]
        horizontal = (error[:, :, :-2] - error[:, :, 2:]).abs() * keep[:, :, :-2] * keep[:, :, 2:]
        count = keep.sum(dim=(1, 2)).clamp_min(1)
        total = total + ((vertical.sum(dim=(1, 2)) + horizontal.sum(dim=(1, 2))) / count).mean()
    return total


def depth_probe_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    max_depth: float,
    gradient_weight: float = 0.5,
    warm_up: bool = False,
) -> torch.Tensor:
    """SigLoss + ``gradient_weight`` · gradient loss, with the prediction resized to the target.

    Args:
        prediction: probe output. [B, h', w']
        target: ground-truth depth, 0 where missing. [B, H, W]
        max_depth: ground truth above it is ignored.
        gradient_weight: weight of the gradient loss (0.5 in the protocol).
        warm_up: SigLoss warm-up form.

    Returns:
        scalar loss.
    """
    if prediction.shape[-2:] != target.shape[-2:]:
        prediction = F.interpolate(prediction[:, None], size=target.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    valid = (target > 0) & (target <= max_depth)
    if not bool(valid.any()):
        return prediction.sum() * 0.0
    return sig_loss(prediction, target, valid, warm_up) + gradient_weight * gradient_loss(prediction, target, valid)
