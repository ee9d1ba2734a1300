"""The teacher's stages after the ViT, each with its direct ``apply`` beside its linear map ``weights``.

Once the frozen lifter has placed the Gaussians, everything the SnD teacher does to the context
tokens is linear in them:

1. :class:`Upsample`: context tokens → context pixels (mask-aware or patch-aligned);
2. :class:`Splat`: lift (each context pixel's features on its Gaussian, ordered ``b (v h w)``)
   and render into the target cameras, with the rendered alpha;
3. :class:`Blend`: each target pixel mixed with its instance segment's mean;
4. :class:`Resample`: target pixels → the student's token grid;

and :func:`token_coverage`, the tokens the Gaussians cover, from the rendered alpha (not linear
in the features, shared by both paths).

``apply`` runs a stage on features (:meth:`SplatTeacher.forward
<snd_hf.splatting.teacher.SplatTeacher.forward>`); ``weights`` returns the same map as indices and
weights, which :func:`~snd_hf.splatting.teacher.operator.compose_operator` multiplies into the
cached operator (:meth:`SplatTeacher.operator <snd_hf.splatting.teacher.SplatTeacher.operator>`).
Stages are built per batch, from the geometry and masks they depend on.

Shapes: B batch, Vc/Vt context/target views, C channels, (hc, wc) context and (h, w) target token
grids, (H, W) image sizes, S segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ...cameras import Cameras
from ..gaussians import Gaussians
from ..masks import blend_with_mask, resize_masks, segment_mean_weights
from ..render import (
    Backend,
    CompositingWeights,
    RenderOutput,
    compositing_weights,
    render_features,
)
from ..upsampling import Upsampling, upsample_features, upsampling_weights

Resampling = Literal["area", "bilinear"]


@dataclass
class Upsample:
    """Context tokens → context pixels (:mod:`snd_hf.splatting.upsampling`).

    Attributes:
        grid: ``(hc, wc)`` token grid of the context features.
        size: ``(H, W)`` of the context images.
        mode: ``"original"`` (align-corners bilinear) or ``"patch_aligned"``.
        masks: context instance ids at ``size`` for mask-aware upsampling, or None. [B·Vc, H, W]
    """

    grid: tuple[int, int]
    size: tuple[int, int]
    mode: Upsampling
    masks: torch.Tensor | None

    def apply(self, features: torch.Tensor) -> torch.Tensor:
        """Upsampled features. [B, Vc, C, hc, wc] → [B, Vc, C, H, W]"""
        upsampled = upsample_features(features.flatten(0, 1), self.size, mode=self.mode, masks=self.masks)
        return upsampled.unflatten(0, features.shape[:2])

    def weights(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Neighbour token indices [K, H, W] and their weights [B·Vc or 1, K, H, W] (:func:`~snd_hf.splatting.upsampling.upsampling_weights`)."""
        return upsampling_weights(self.grid, self.size, mode=self.mode, masks=self.masks, device=device)


@dataclass
class Splat:
    """Context pixels → target pixels: lift every pixel's features onto its Gaussian, render them.

    Attributes:
        gaussians: the lifter's Gaussians, one per context pixel, ordered ``b (v h w)``. [B, Vc·H·W]
        cameras: the target cameras. [B, Vt]
        backend: render backend (see :func:`~snd_hf.splatting.render.render_features`).
    """

    gaussians: Gaussians
    cameras: Cameras
    backend: Backend = "auto"

    def apply(self, features: torch.Tensor) -> RenderOutput:
        """Rendered features [B, Vt, C, H, W] and alpha [B, Vt, 1, H, W] of context-pixel features [B, Vc, C, H, W]."""
        batch, _, channels = features.shape[:3]
        # Deviation: all channels in one pass, covariances rendered directly (no eigh scales).
        attached = features.permute(0, 1, 3, 4, 2).reshape(batch, -1, channels)  # b (v h w) c, one per Gaussian
        return render_features(self.gaussians.with_features(attached), self.cameras, backend=self.backend)

    def weights(self) -> list[list[CompositingWeights]]:
        """``weights[b][v]``: (target pixel, Gaussian, αT) pairs and the alpha of camera v (:func:`~snd_hf.splatting.render.compositing_weights`)."""
        return compositing_weights(self.gaussians, self.cameras)


@dataclass
class Blend:
    """Each target pixel becomes ``coefficient · f + (1 − coefficient) · mean(segment)``.

    Attributes:
        coefficient: weight of a pixel's own features; 1.0 = no blending.
        masks: target instance ids (resized nearest to the image size). [B, Vt, Hm, Wm]
        weighted: segment means weighted by the rendered alpha (False: plain means, the original).
    """

    coefficient: float
    masks: torch.Tensor
    weighted: bool

    def apply(self, features: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Blended features [B, Vt, C, H, W] of rendered features [B, Vt, C, H, W] with alpha [B, Vt, 1, H, W]."""
        if self.coefficient == 1.0:
            return features
        # Deviation: segment means weighted by coverage (the original averages in the zeros).
        weights = alpha if self.weighted else None
        # In place when no gradient flows through the render: no second full-resolution buffer.
        out = features if not features.requires_grad and features.is_contiguous() else None
        return blend_with_mask(features, self.masks, self.coefficient, weights, out=out)

    def weights(self, b: int, v: int, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The segment means of sample ``b``'s target view ``v``, given its rendered alpha [1, H, W].

        Returns:
            means ``[S, H·W]`` and membership ``[H·W, S]`` sparse float64 maps (see
            :func:`~snd_hf.splatting.masks.segment_mean_weights`); the blend is
            ``coefficient · f + (1 − coefficient) · membership @ means @ f``.
        """
        segments = resize_masks(self.masks[b, v], tuple(alpha.shape[-2:])).flatten()
        return segment_mean_weights(segments, alpha.flatten() if self.weighted else None)


@dataclass
class Resample:
    """Target pixels → the student's token grid.

    Attributes:
        size: ``(H, W)`` of the target images.
        grid: ``(h, w)`` the student's token grid.
        mode: ``"area"`` (average over each token's pixels) or ``"bilinear"`` (the original, aliasing).
    """

    size: tuple[int, int]
    grid: tuple[int, int]
    mode: Resampling

    def apply(self, features: torch.Tensor) -> torch.Tensor:
        """Token features [B, V, C, h, w] of pixel features [B, V, C, H, W]."""
        return self._interpolate(features.flatten(0, 1)).unflatten(0, features.shape[:2])

    def weights(self, device: torch.device) -> torch.Tensor:
        """``[h·w, H·W]`` sparse float64 map of :meth:`apply` (rows tokens, columns pixels, row-major).

        Both modes are separable; each axis's 1-D weights are read off :meth:`apply`'s own
        interpolation of an identity, so they match it.
        """

        def axis(length: int, target: int) -> torch.Tensor:  # [target, length]
            identity = torch.eye(length, dtype=torch.float64, device=device)[:, None, :, None]
            return self._interpolate(identity, (target, 1))[:, 0, :, 0].T

        rows, columns = axis(self.size[0], self.grid[0]), axis(self.size[1], self.grid[1])
        row_index, row_pixel = rows.nonzero(as_tuple=True)
        column_index, column_pixel = columns.nonzero(as_tuple=True)
        token = row_index[:, None] * self.grid[1] + column_index[None, :]
        pixel = row_pixel[:, None] * self.size[1] + column_pixel[None, :]
        values = rows[row_index, row_pixel][:, None] * columns[column_index, column_pixel][None, :]
        indices = torch.stack([token.reshape(-1), pixel.reshape(-1)])
        size = (self.grid[0] * self.grid[1], self.size[0] * self.size[1])
        return torch.sparse_coo_tensor(indices, values.reshape(-1), size, check_invariants=False).coalesce()

    def _interpolate(self, features: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """[N, C, H, W] → [N, C, h, w] with the configured mode."""
        grid = self.grid if grid is None else grid
        if self.mode == "area":
            # Deviation: area averaging over each token's pixels (the original's bilinear aliases).
            return F.interpolate(features, size=grid, mode="area")
        return F.interpolate(features, size=grid, mode="bilinear", align_corners=False)


def token_coverage(alpha: torch.Tensor, grid: tuple[int, int], threshold: float) -> torch.Tensor:
    """Tokens whose area-averaged rendered alpha reaches ``threshold``.

    Deviation: coverage from the rendered feature alpha (the original used an RGB render).

    Args:
        alpha: rendered alpha. [B, V, 1, H, W]
        grid: ``(h, w)`` the token grid.
        threshold: smallest area-averaged alpha of a covered token.

    Returns:
        coverage. [B, V, h, w]
    """
    token_alpha = F.interpolate(alpha.flatten(0, 1), size=grid, mode="area")
    return token_alpha.unflatten(0, alpha.shape[:2])[:, :, 0] >= threshold
