"""MVSplat's cost-volume depth predictor.

From the backbone's 1/4-resolution features it builds a plane-sweep cost volume (candidates
uniform in inverse depth between each view's near and far), refines it with a U-Net, reads a
coarse disparity off a softmax over the candidates, upsamples it ×4 and refines it at full
resolution with a second U-Net fed with the image, upsampled features, the coarse disparity and
the softmax peak. Heads then predict a disparity residual, a density and the raw Gaussian
parameters of every pixel.

Tensors inside the predictor are ordered ``(b v)``. Deviation: the original orders them ``(v b)``;
the order only matters for reshapes, which we do consistently, so results are unchanged.
Module names reproduce the original's so that MVSplat checkpoints load with identical keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .unet import UNet, run_layers

# Channels of the raw Gaussian parameters that the geometry needs:
# 2 pixel-offset logits, 3 scale logits, 4 quaternion (xyzw) components.
GEOMETRY_CHANNELS = 9
# Depth candidates warped at a time when building the cost volume (bounds peak memory).
CANDIDATE_CHUNK = 16


@dataclass
class DepthPrediction:
    """Per-pixel outputs of the depth predictor for every context view.

    Attributes:
        depths: depth of each pixel's Gaussian, clamped to [near, far]. [B, V, H, W]
        densities: sigmoid density, used as opacity. [B, V, H, W]
        gaussian_params: raw geometry parameters (offset logits xy, scale logits, quaternion xyzw). [B, V, H, W, 9]
    """

    depths: torch.Tensor
    densities: torch.Tensor
    gaussian_params: torch.Tensor


def disparity_candidates(near: torch.Tensor, far: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` disparities uniform from ``1 / far`` (index 0) to ``1 / near``.

    Args:
        near: near plane per view. [...]
        far: far plane per view. [...]

    Returns:
        the candidates. [..., count]
    """
    steps = torch.linspace(0.0, 1.0, count, device=near.device, dtype=near.dtype)
    low, high = 1.0 / far[..., None], 1.0 / near[..., None]
    return low + steps * (high - low)


def plane_sweep_correlation(
    reference: torch.Tensor,
    source: torch.Tensor,
    intrinsics: torch.Tensor,
    reference_to_source: torch.Tensor,
    depths: torch.Tensor,
) -> torch.Tensor:
    """Correlation of reference features with source features warped through depth planes.

    Pixel ``(x, y)`` of the reference view (integer coordinates of the feature map) is lifted
    to each candidate z-depth with the reference intrinsics, moved into the source camera and
    projected back with the same intrinsics; the source features are sampled there (bilinear,
    ``align_corners=True``, zeros outside) and dotted with the reference features / sqrt(C).

    Args:
        reference: reference-view features. [N, C, h, w]
        source: source-view features. [N, C, h, w]
        intrinsics: reference intrinsics in feature-map pixels. [N, 3, 3]
        reference_to_source: reference camera → source camera transform. [N, 4, 4]
        depths: candidate z-depths. [N, D]

    Returns:
        the correlation per candidate. [N, D, h, w]
    """
    count, channels, height, width = reference.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, device=reference.device, dtype=reference.dtype),
        torch.arange(width, device=reference.device, dtype=reference.dtype),
        indexing="ij",
    )
    pixels = torch.stack([xs, ys, torch.ones_like(xs)]).reshape(1, 3, height * width)
    rays = torch.linalg.inv(intrinsics) @ pixels  # [N, 3, h*w]
    rays = reference_to_source[:, :3, :3] @ rays
    translation = reference_to_source[:, :3, 3, None, None]  # [N, 3, 1, 1]

    # Deviation: warped a chunk of candidates at a time (the original warps all at once); same values.
    correlations = []
    for chunk in depths.split(CANDIDATE_CHUNK, dim=1):
        planes = chunk.shape[1]
        points = rays[:, :, None, :] * chunk[:, None, :, None] + translation  # [N, 3, d, h*w]
        projected = (intrinsics @ points.reshape(count, 3, -1)).reshape(count, 3, planes, height * width)
        xy = projected[:, :2] / projected[:, 2:].clamp(min=1e-3)
        grid = torch.stack([2 * xy[:, 0] / (width - 1) - 1, 2 * xy[:, 1] / (height - 1) - 1], dim=-1)
        warped = F.grid_sample(
            source, grid.reshape(count, planes * height, width, 2), mode="bilinear", padding_mode="zeros",
            align_corners=True,
        ).reshape(count, channels, planes, height, width)
        correlations.append((reference[:, :, None] * warped).sum(dim=1) / channels**0.5)
    return torch.cat(correlations, dim=1)


def build_cost_volume(
    features: torch.Tensor,
    intrinsics: torch.Tensor,
    extrinsics: torch.Tensor,
    disparities: torch.Tensor,
) -> torch.Tensor:
    """Plane-sweep cost volume of every view against every other view, averaged.

    Args:
        features: backbone features. [B, V, C, h, w]
        intrinsics: normalised intrinsics. [B, V, 3, 3]
        extrinsics: camera-to-world, OpenCV. [B, V, 4, 4]
        disparities: candidate disparities of each (reference) view. [B, V, D]

    Returns:
        the cost volume of each view. [B, V, D, h, w]
    """
    batch, views, channels, height, width = features.shape
    pixel_intrinsics = intrinsics.clone()
    pixel_intrinsics[..., 0, :] *= width
    pixel_intrinsics[..., 1, :] *= height
    reference_index = [i for i in range(views) for j in range(views) if j != i]
    source_index = [j for i in range(views) for j in range(views) if j != i]
    if views == 2:
        # The original computes view 1's relative pose as the inverse of view 0's; kept for parity.
        forward = torch.linalg.inv(extrinsics[:, 1]) @ extrinsics[:, 0]
        relative = torch.stack([forward, torch.linalg.inv(forward)], dim=1)
    else:
        relative = torch.linalg.inv(extrinsics[:, source_index]) @ extrinsics[:, reference_index]
    pairs = views - 1
    correlation = plane_sweep_correlation(
        features[:, reference_index].flatten(0, 1),
        features[:, source_index].flatten(0, 1),
        pixel_intrinsics[:, reference_index].flatten(0, 1),
        relative.flatten(0, 1),
        1.0 / disparities[:, reference_index].flatten(0, 1),
    )
    return correlation.reshape(batch, views, pairs, -1, height, width).mean(dim=2)


class CostVolumeDepthPredictor(nn.Module):
    """Cost volume → coarse depth → full-resolution refinement → per-pixel Gaussian parameters.

    Args:
        feature_channels: backbone feature channels.
        num_depth_candidates: plane-sweep candidates.
        upscale_factor: full resolution / feature resolution.
        costvolume_unet_channels: width of the cost-volume U-Net.
        costvolume_unet_channel_mult: its level multipliers.
        costvolume_unet_attention_resolutions: its attention rates.
        depth_unet_channels: width of the depth-refinement U-Net.
        depth_unet_channel_mult: its level multipliers.
        depth_unet_attention_resolutions: its attention rates.
        head_channels: channels per attention head in both U-Nets.
        gaussian_raw_channels: channels of the checkpoint's Gaussian head (2 + 7 + 3 x SH coefficients).
    """

    def __init__(
        self,
        feature_channels: int = 128,
        num_depth_candidates: int = 128,
        upscale_factor: int = 4,
        costvolume_unet_channels: int = 128,
        costvolume_unet_channel_mult: Sequence[int] = (1, 1, 1),
        costvolume_unet_attention_resolutions: Sequence[int] = (4,),
        depth_unet_channels: int = 32,
        depth_unet_channel_mult: Sequence[int] = (1, 1, 1, 1, 1),
        depth_unet_attention_resolutions: Sequence[int] = (16,),
        head_channels: int = 32,
        gaussian_raw_channels: int = 84,
    ) -> None:
        super().__init__()
        self.num_depth_candidates = num_depth_candidates
        self.upscale_factor = upscale_factor

        # Cost-volume refinement at feature resolution, with a 1x1 skip connection.
        volume_channels = num_depth_candidates + feature_channels
        self.corr_refine_net = nn.ModuleList(
            [
                nn.Conv2d(volume_channels, costvolume_unet_channels, 3, padding=1),
                nn.GroupNorm(8, costvolume_unet_channels),
                nn.GELU(),
                UNet(
                    costvolume_unet_channels,
                    costvolume_unet_channel_mult,
                    costvolume_unet_attention_resolutions,
                    head_channels,
                ),
                nn.Conv2d(costvolume_unet_channels, num_depth_candidates, 3, padding=1),
            ]
        )
        self.regressor_residual = nn.Conv2d(volume_channels, num_depth_candidates, 1)
        self.depth_head_lowres = nn.Sequential(
            nn.Conv2d(num_depth_candidates, 2 * num_depth_candidates, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * num_depth_candidates, num_depth_candidates, 3, padding=1),
        )

        # Feature upsampler to full resolution.
        self.upsampler = nn.Sequential(
            nn.Conv2d(2 * feature_channels, feature_channels, 3, padding=1),
            nn.Upsample(scale_factor=upscale_factor, mode="bilinear", align_corners=True),
            nn.GELU(),
        )
        self.proj_feature = nn.Conv2d(feature_channels, depth_unet_channels, 3, padding=1)

        # Depth refinement at full resolution: image, features, coarse disparity, softmax peak.
        self.refine_unet = nn.ModuleList(
            [
                nn.Conv2d(3 + depth_unet_channels + 2, depth_unet_channels, 3, padding=1),
                nn.GroupNorm(4, depth_unet_channels),
                nn.GELU(),
                UNet(depth_unet_channels, depth_unet_channel_mult, depth_unet_attention_resolutions, head_channels),
            ]
        )

        self.to_gaussians = nn.Sequential(
            nn.Conv2d(depth_unet_channels + 3 + feature_channels, 2 * gaussian_raw_channels, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * gaussian_raw_channels, gaussian_raw_channels, 3, padding=1),
        )
        self.to_disparity = nn.Sequential(
            nn.Conv2d(depth_unet_channels, 2 * depth_unet_channels, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * depth_unet_channels, 2, 3, padding=1),
        )

    def forward(
        self,
        features: torch.Tensor,
        cnn_features: torch.Tensor,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        near: torch.Tensor,
        far: torch.Tensor,
    ) -> DepthPrediction:
        """Predict depth, density and raw Gaussian parameters for every context pixel.

        Args:
            features: transformer features. [B, V, C, h, w]
            cnn_features: CNN features. [B, V, C, h, w]
            images: context images in [0, 1]. [B, V, 3, H, W]
            intrinsics: normalised intrinsics. [B, V, 3, 3]
            extrinsics: camera-to-world, OpenCV. [B, V, 4, 4]
            near: near plane. [B, V]
            far: far plane. [B, V]

        Returns:
            the per-pixel prediction (see :class:`DepthPrediction`).
        """
        batch, views = features.shape[:2]
        disparities = disparity_candidates(near, far, self.num_depth_candidates).to(features.dtype)  # [B, V, D]
        cost = build_cost_volume(features, intrinsics, extrinsics, disparities)
        reference = features.flatten(0, 1)  # [(B V), C, h, w]
        volume = torch.cat([cost.flatten(0, 1), reference], dim=1)

        refined = run_layers(self.corr_refine_net, volume, views) + self.regressor_residual(volume)
        pdf = torch.softmax(self.depth_head_lowres(refined), dim=1)  # [(B V), D, h, w]
        coarse = (disparities.flatten(0, 1)[:, :, None, None] * pdf).sum(dim=1, keepdim=True)
        peak = F.interpolate(pdf.amax(dim=1, keepdim=True), scale_factor=self.upscale_factor, mode="nearest")
        coarse = F.interpolate(coarse, scale_factor=self.upscale_factor, mode="bilinear", align_corners=True)

        upsampled = self.upsampler(torch.cat([reference, cnn_features.flatten(0, 1)], dim=1))
        pixels = images.flatten(0, 1)
        refine_in = torch.cat([pixels, self.proj_feature(upsampled), coarse, peak], dim=1)
        refined_full = run_layers(self.refine_unet, refine_in, views)  # [(B V), C_d, H, W]

        # Deviation: only the geometry channels of the Gaussian head are computed; the colour
        # harmonics (the other 75 channels) are not needed to splat features.
        hidden = self.to_gaussians[1](self.to_gaussians[0](torch.cat([refined_full, pixels, upsampled], dim=1)))
        head = self.to_gaussians[2]
        params = F.conv2d(hidden, head.weight[:GEOMETRY_CHANNELS], head.bias[:GEOMETRY_CHANNELS], padding=1)

        delta, density_logits = self.to_disparity(refined_full).unbind(dim=1)
        bounds = (1.0 / far.flatten()[:, None, None], 1.0 / near.flatten()[:, None, None])
        disparity = (coarse[:, 0] + delta).clamp(*bounds)  # [(B V), H, W]

        height, width = disparity.shape[-2:]
        return DepthPrediction(
            depths=(1.0 / disparity).reshape(batch, views, height, width),
            densities=torch.sigmoid(density_logits).reshape(batch, views, height, width),
            gaussian_params=params.permute(0, 2, 3, 1).reshape(batch, views, height, width, GEOMETRY_CHANNELS),
        )
