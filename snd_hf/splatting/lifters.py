"""Lifters: context views → one 3D Gaussian per context pixel.

Every lifter takes the context images, their :class:`~snd_hf.cameras.Cameras` and, for lifters
that place Gaussians by it, their depth maps, and returns
:class:`~snd_hf.splatting.gaussians.Gaussians` ordered ``b (v h w)``, so the teacher's
upsampled features of the context views attach to them one to one. A scene batch's ``context``
(see :mod:`snd_hf.data`) converts in one place, the teacher's stages.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..cameras import Cameras, camera_rays, denormalize_intrinsics, unproject_depth
from .gaussians import Gaussians


class Lifter(nn.Module):
    """Interface of every lifter (frozen during SnD training).

    ``forward(images, cameras, depth=None)`` takes the context images [B, V, 3, H, W] in [0, 1],
    their cameras [B, V] (``cameras.image_size == (H, W)``) and their z-depth maps [B, V, H', W']
    (only lifters that need depth read it); it returns Gaussians with ``G = V * H * W``.
    """

    def forward(self, images: torch.Tensor, cameras: Cameras, depth: torch.Tensor | None = None) -> Gaussians:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(images, cameras, depth) -> Gaussians")


def check_lifter_inputs(images: torch.Tensor, cameras: Cameras) -> tuple[int, int, int, int]:
    """Check a lifter's ``images`` [B, V, 3, H, W] against its ``cameras`` [B, V]; return ``(B, V, H, W)``.

    Raises:
        TypeError: ``images`` is not a tensor or ``cameras`` not a :class:`~snd_hf.cameras.Cameras`.
        ValueError: a shape differs from the one expected, named with both.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"`images` must be a tensor [B, V, 3, H, W], got {type(images).__name__}.")
    if not isinstance(cameras, Cameras):
        raise TypeError(
            f"`cameras` must be a Cameras [B, V] (a scene batch's views: `Cameras.from_views(context)`), got "
            f"{type(cameras).__name__}."
        )
    if images.ndim != 5 or images.shape[2] != 3:
        raise ValueError(f"`images` must have shape [B, V, 3, H, W], got {list(images.shape)}.")
    batch, views, _, height, width = images.shape
    if tuple(cameras.near.shape) != (batch, views):
        raise ValueError(f"`cameras` must have shape [{batch}, {views}] (one per image), got {list(cameras.near.shape)}.")
    if cameras.image_size != (height, width):
        raise ValueError(f"`cameras.image_size` must be the images' (H, W) = {(height, width)}, got {cameras.image_size}.")
    return batch, views, height, width


class DepthLifter(Lifter):
    """Lift every context pixel with a given depth map (sensor, ground truth or monocular).

    Each pixel becomes a Gaussian at its unprojected centre whose size is the pixel's footprint
    at its depth: ``σ = scale · depth / focal`` (``focal`` in pixels).

    - ``footprint="isotropic"``: a ball, ``Σ = σ² I`` with the geometric-mean focal length.
    - ``footprint="surface"``: a disc in the local surface plane, thin along its normal. The
      in-plane axes are the 3D steps to the next pixel along x and y (from the depth gradients,
      the smaller one-sided difference so that depth edges do not bridge), scaled by ``scale`` and
      capped at ``max_stretch`` times the fronto-parallel step; the normal axis has standard
      deviation ``thickness · σ``. On a fronto-parallel plane the in-plane axes are exactly
      ``scale · depth / fx`` and ``scale · depth / fy``.

    Pixels with invalid depth (0 or not finite) get opacity 0, so they never render.

    Args:
        scale: footprint standard deviation in pixels.
        opacity: opacity of every valid Gaussian, in [0, 1].
        footprint: ``"isotropic"`` or ``"surface"``.
        thickness: surface footprint: normal standard deviation as a fraction of ``σ``.
        max_stretch: surface footprint: largest in-plane axis, in fronto-parallel pixel steps.
    """

    def __init__(
        self,
        scale: float = 0.5,
        opacity: float = 1.0,
        footprint: Literal["isotropic", "surface"] = "isotropic",
        thickness: float = 0.1,
        max_stretch: float = 4.0,
    ):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"`scale` must be positive, got {scale}.")
        if not 0.0 <= opacity <= 1.0:
            raise ValueError(f"`opacity` must be in [0, 1], got {opacity}.")
        if footprint not in ("isotropic", "surface"):
            raise ValueError(f"`footprint` must be 'isotropic' or 'surface', got {footprint!r}.")
        if thickness <= 0 or max_stretch < 1:
            raise ValueError(f"`thickness` must be positive and `max_stretch` >= 1, got {thickness} and {max_stretch}.")
        self.scale, self.opacity, self.footprint = scale, opacity, footprint
        self.thickness, self.max_stretch = thickness, max_stretch

    def forward(self, images: torch.Tensor, cameras: Cameras, depth: torch.Tensor | None = None) -> Gaussians:
        """Gaussians ``b (v h w)`` at the image size, placed by ``depth``.

        Args:
            images: context images; only their size is read. [B, V, 3, H, W]
            cameras: their cameras. [B, V]
            depth: z-depth per pixel, resized (nearest) to ``(H, W)`` if needed. [B, V, H', W']

        Raises:
            ValueError: ``depth`` is missing or misshaped (and see :func:`check_lifter_inputs`).
        """
        batch, views, height, width = check_lifter_inputs(images, cameras)
        if depth is None:
            raise ValueError(f"`depth` [{batch}, {views}, H, W] is required by DepthLifter (the context views have none).")
        if depth.ndim != 4 or depth.shape[:2] != (batch, views):
            raise ValueError(f"`depth` must have shape [{batch}, {views}, H, W], got {list(depth.shape)}.")
        if depth.shape[-2:] != (height, width):
            depth = F.interpolate(depth.float(), size=(height, width), mode="nearest")
        extrinsics, intrinsics = cameras.extrinsics, cameras.intrinsics
        depth = depth.to(extrinsics.dtype)
        valid = torch.isfinite(depth) & (depth > 0)
        depth = torch.where(valid, depth, torch.zeros_like(depth))
        focal = denormalize_intrinsics(intrinsics, height, width).diagonal(dim1=-2, dim2=-1)[..., :2]  # [B, V, 2]

        means = unproject_depth(depth, extrinsics, intrinsics)  # [B, V, H, W, 3]
        sigma = self.scale * depth / focal.prod(-1).sqrt()[..., None, None]  # [B, V, H, W]
        if self.footprint == "isotropic":
            covariances = sigma[..., None, None] ** 2 * torch.eye(3, dtype=depth.dtype, device=depth.device)
        else:
            covariances = self._surface_covariances(depth, valid, focal, intrinsics, sigma)
            rotation = extrinsics[..., None, None, :3, :3]
            covariances = rotation @ covariances @ rotation.transpose(-1, -2)
        opacities = valid.to(depth.dtype) * self.opacity
        return Gaussians(
            means=means.flatten(1, 3),
            covariances=covariances.flatten(1, 3),
            opacities=opacities.flatten(1),
        )

    def _surface_covariances(
        self,
        depth: torch.Tensor,  # [B, V, H, W]
        valid: torch.Tensor,  # [B, V, H, W]
        focal: torch.Tensor,  # [B, V, 2] in pixels
        intrinsics: torch.Tensor,  # [B, V, 3, 3]
        sigma: torch.Tensor,  # [B, V, H, W] isotropic footprint, scale · depth / focal
    ) -> torch.Tensor:
        """Camera-frame disc covariances from the depth gradients. [B, V, H, W, 3, 3]"""
        height, width = depth.shape[-2:]
        points = camera_rays(intrinsics, height, width) * depth[..., None]  # [B, V, H, W, 3]
        # Fronto-parallel pixel steps, the fallback where no valid neighbour exists.
        step_x = depth / focal[..., 0, None, None]
        step_y = depth / focal[..., 1, None, None]
        zeros = torch.zeros_like(depth)
        tangent_x = _pixel_step(points, valid, dim=-2, fallback=torch.stack([step_x, zeros, zeros], -1))
        tangent_y = _pixel_step(points, valid, dim=-3, fallback=torch.stack([zeros, step_y, zeros], -1))
        # Cap the stretch at grazing angles.
        tangent_x = tangent_x * (self.max_stretch * step_x / tangent_x.norm(dim=-1).clamp_min(1e-12)).clamp_max(1.0)[..., None]
        tangent_y = tangent_y * (self.max_stretch * step_y / tangent_y.norm(dim=-1).clamp_min(1e-12)).clamp_max(1.0)[..., None]
        normal = F.normalize(torch.cross(tangent_x, tangent_y, dim=-1), dim=-1)
        sigma_normal = self.thickness * sigma
        return self.scale**2 * (_outer(tangent_x) + _outer(tangent_y)) + sigma_normal[..., None, None] ** 2 * _outer(normal)


def _outer(vectors: torch.Tensor) -> torch.Tensor:
    """v vᵀ of vectors [..., 3] → [..., 3, 3]."""
    return vectors[..., :, None] * vectors[..., None, :]


def _pixel_step(
    points: torch.Tensor,  # [B, V, H, W, 3]
    valid: torch.Tensor,  # [B, V, H, W]
    dim: int,
    fallback: torch.Tensor,  # [B, V, H, W, 3]
) -> torch.Tensor:
    """3D step to the next pixel along ``dim`` (-2: x, -3: y of ``points``): the shorter valid one-sided difference."""
    length = points.shape[dim]
    forward = points.narrow(dim, 1, length - 1) - points.narrow(dim, 0, length - 1)  # [..., L - 1, ..., 3]
    both = valid.narrow(dim + 1, 1, length - 1) & valid.narrow(dim + 1, 0, length - 1)
    pad = [0, 0] * (-dim - 2)  # F.pad counts from the last dimension of `valid`
    ahead = F.pad(forward.movedim(dim, -1), [0, 1]).movedim(-1, dim)  # difference to the next pixel
    behind = F.pad(forward.movedim(dim, -1), [1, 0]).movedim(-1, dim)  # difference from the previous pixel
    ahead_valid = F.pad(both.to(torch.uint8), pad + [0, 1]).bool()
    behind_valid = F.pad(both.to(torch.uint8), pad + [1, 0]).bool()
    inf = torch.full_like(points[..., 0], float("inf"))
    ahead_length = torch.where(ahead_valid, ahead.norm(dim=-1), inf)
    behind_length = torch.where(behind_valid, behind.norm(dim=-1), inf)
    step = torch.where((ahead_length <= behind_length)[..., None], ahead, behind)
    return torch.where((ahead_valid | behind_valid)[..., None], step, fallback)
