"""MVSplat's Gaussian adapter: per-pixel depth and raw parameters → 3D Gaussians.

Each pixel's Gaussian sits at its (sigmoid-offset) pixel position, at the predicted depth
measured *along the unit ray* (the cost volume itself treats the same value as z-depth; both
conventions are the original's and are kept). Its scale is the sigmoid-mapped scale logit times
the depth and the footprint of one pixel; its rotation is the normalised quaternion. Colour
spherical harmonics are not produced (see docs/deviations.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...cameras import pixel_centers, quaternion_xyzw_to_matrix

# Multiplier of the pixel footprint in the Gaussian scale (the original's default).
PIXEL_SCALE_MULTIPLIER = 0.1
EPS = 1e-8


@dataclass
class PixelGaussians:
    """One Gaussian per pixel, in image layout.

    Attributes:
        means: world-space centres. [B, V, H, W, 3]
        covariances: world-space covariances. [B, V, H, W, 3, 3]
        scales: camera-frame standard deviations. [B, V, H, W, 3]
        rotations: camera-frame unit quaternions (x, y, z, w). [B, V, H, W, 4]
    """

    means: torch.Tensor
    covariances: torch.Tensor
    scales: torch.Tensor
    rotations: torch.Tensor


def pixel_gaussians(
    depths: torch.Tensor,
    params: torch.Tensor,
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    scale_min: float = 0.5,
    scale_max: float = 15.0,
) -> PixelGaussians:
    """Turn per-pixel depths and raw parameters into world-space Gaussians.

    Args:
        depths: distance along each pixel's ray. [B, V, H, W]
        params: raw parameters: offset logits xy, scale logits, quaternion xyzw. [B, V, H, W, 9]
        extrinsics: camera-to-world, OpenCV. [B, V, 4, 4]
        intrinsics: normalised intrinsics. [B, V, 3, 3]
        scale_min: smallest scale, in pixel footprints at unit depth.
        scale_max: largest scale, in pixel footprints at unit depth.

    Returns:
        the Gaussians (see :class:`PixelGaussians`).
    """
    height, width = depths.shape[-2:]
    offset_logits, scale_logits, quaternions = params.split((2, 3, 4), dim=-1)
    pixel_size = torch.tensor([1.0 / width, 1.0 / height], device=depths.device, dtype=depths.dtype)

    # Means: the (offset) pixel's unit ray, scaled by the depth.
    xy = pixel_centers(height, width, depths.device, depths.dtype) + (offset_logits.sigmoid() - 0.5) * pixel_size
    inverse_intrinsics = torch.linalg.inv(intrinsics)[:, :, None, None]  # [B, V, 1, 1, 3, 3]
    homogeneous = torch.cat([xy, torch.ones_like(xy[..., :1])], dim=-1)
    directions = (inverse_intrinsics @ homogeneous[..., None]).squeeze(-1)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    camera_to_world = extrinsics[:, :, None, None, :3, :3]  # [B, V, 1, 1, 3, 3]
    directions = (camera_to_world @ directions[..., None]).squeeze(-1)
    means = extrinsics[:, :, None, None, :3, 3] + directions * depths[..., None]

    # Scales: sigmoid range x depth x the footprint of one pixel at unit depth.
    footprint = PIXEL_SCALE_MULTIPLIER * (inverse_intrinsics[..., :2, :2] @ pixel_size[:, None]).squeeze(-1).sum(-1)
    scales = scale_min + (scale_max - scale_min) * scale_logits.sigmoid()
    scales = scales * depths[..., None] * footprint[..., None]

    rotations = quaternions / (quaternions.norm(dim=-1, keepdim=True) + EPS)
    rotation_matrices = quaternion_xyzw_to_matrix(rotations)
    scaled = rotation_matrices * scales[..., None, :]  # R S
    covariances = camera_to_world @ (scaled @ scaled.transpose(-1, -2)) @ camera_to_world.transpose(-1, -2)
    return PixelGaussians(means=means, covariances=covariances, scales=scales, rotations=rotations)
