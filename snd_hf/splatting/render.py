"""Feature rendering: splat 3D Gaussians carrying C-channel features into cameras.

One public entry, :func:`render_features`, renders every channel of the Gaussians' features,
their accumulated opacity (alpha) and their expected depth in a single pass. Two backends
share the mathematics of gsplat's 3DGS rasteriser (v1.5.3, ``rasterization`` with
``covars`` given directly, ``render_mode="RGB+ED"``):

- ``"gsplat"``: gsplat's fused CUDA kernels (imported lazily, CUDA tensors only);
- ``"torch"``: :func:`_render_features_torch`, a pure-torch twin for CPU, tests and CI. It is
  differentiable w.r.t. the features, means, covariances and opacities, and memory-bounded:
  (pixel, Gaussian) pairs are composited in bands of pixel rows under a pair budget.

Both stay in the autograd graph for every input, including renders where nothing is visible (no
Gaussians, all culled, zero opacity): the outputs then hold the background and backpropagate
zero gradients (gsplat's kernels skip empty launches; its autograd functions keep the graph).

The mathematics (per camera):

1. EWA projection: ``Σ₂ = J W Σ Wᵀ Jᵀ + eps2d·I`` with the perspective Jacobian ``J`` at the
   camera-space mean (clamped to 1.3x the field of view, as gsplat does) and a 0.3 px² low-pass.
2. Culling: centres outside ``[near, far]`` (z-depth), non-positive-definite ``Σ₂`` and opacities
   below 1/255 contribute nothing; the screen-space extent is gsplat's opacity-aware bound
   ``min(3.33, sqrt(2 log(255 · opacity)))`` standard deviations.
3. Front-to-back compositing in depth order with pixel centres at ``(j + 0.5, i + 0.5)`` px:
   ``αᵢ = min(0.999, oᵢ exp(-½ dᵀ Σ₂⁻¹ d))``, splats with ``αᵢ < 1/255`` are skipped and a pixel
   stops before the splat that would bring its transmittance ``T`` to ``1e-4`` or below.
   ``features = Σ fᵢ αᵢ Tᵢ + background · (1 - alpha)``, ``alpha = Σ αᵢ Tᵢ`` and
   ``depth = Σ zᵢ αᵢ Tᵢ / alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..cameras import Cameras, denormalize_intrinsics
from .gaussians import Gaussians

Backend = Literal["auto", "gsplat", "torch"]

ALPHA_THRESHOLD = 1.0 / 255.0  # splats fainter than this at a pixel are skipped
MAX_ALPHA = 0.999  # one splat never makes a pixel fully opaque
TRANSMITTANCE_THRESHOLD = 1e-4  # a pixel stops before its transmittance reaches this
MAX_EXTENT = 3.33  # screen-space extent cap, in standard deviations
SIGMA_CUTOFF = 30.0  # ½ dᵀΣ⁻¹d beyond which exp(-sigma) < 1e-13 (far below 1/255)
DENSE_BOX = 8  # splats whose pixel box fits this many pixels square are paired by broadcasting
GSPLAT_MAX_CHANNELS = 513  # gsplat rasterises at most this many channels per kernel call


@dataclass
class RenderOutput:
    """What :func:`render_features` returns.

    Attributes:
        features: composited features, background filled where alpha < 1. [B, V, C, H, W]
        alpha: accumulated opacity (coverage) in [0, 1). [B, V, 1, H, W]
        depth: expected z-depth ``Σ zᵢ wᵢ / alpha`` (0 where nothing was rendered). [B, V, 1, H, W]
    """

    features: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor


def render_features(
    gaussians: Gaussians,
    cameras: Cameras,  # [B, V]
    *,
    backend: Backend = "auto",
    background: float | torch.Tensor = 0.0,
    eps2d: float = 0.3,
    max_pairs: int = 1 << 21,
    channel_chunk: int | None = None,
) -> RenderOutput:
    """Render the features of a batch of Gaussians into V cameras per batch element, all channels at once.

    Args:
        gaussians: Gaussians with features attached (``gaussians.features`` [B, G, C]).
        cameras: the V cameras of each batch element, rendering at ``cameras.image_size``
            ``(H, W)`` (c2w [B, V, 4, 4], normalised intrinsics [B, V, 3, 3], near/far [B, V];
            see :mod:`snd_hf.cameras`; a scene batch's views give them with
            :meth:`~snd_hf.cameras.Cameras.from_views`). [B, V]
        backend: ``"gsplat"`` (CUDA kernels), ``"torch"`` (pure-torch twin) or ``"auto"`` (gsplat
            for CUDA tensors, torch otherwise).
        background: value of uncovered pixels, a float or one value per channel. [C]
        eps2d: low-pass added to the projected covariances, in px².
        max_pairs: torch backend: most (pixel, Gaussian) pairs composited at once; rows of pixels
            are grouped into bands under this budget, bounding the intermediates to about
            150 bytes per pair (300 MB by default) plus the output.
        channel_chunk: gsplat backend: channels per kernel call; by default all channels and the
            depth in one call when gsplat supports that many (513), else 512 per call.

    Returns:
        :class:`RenderOutput` with features [B, V, C, H, W], alpha and depth [B, V, 1, H, W].
    """
    features = _check_inputs(gaussians, cameras)
    if backend not in ("auto", "gsplat", "torch"):
        raise ValueError(f"`backend` must be 'auto', 'gsplat' or 'torch', got {backend!r}.")
    if backend == "auto":
        backend = "gsplat" if gaussians.means.is_cuda else "torch"
    if backend == "gsplat" and not gaussians.means.is_cuda:
        raise ValueError(
            f"`backend`='gsplat' needs CUDA tensors (gsplat's kernels are CUDA-only), got Gaussians on "
            f"{gaussians.means.device}; use backend='torch' or 'auto'."
        )
    background = torch.as_tensor(background, dtype=features.dtype, device=features.device)
    if background.ndim > 1 or background.numel() not in (1, features.shape[-1]):
        raise ValueError(
            f"`background` must be a float or a tensor [C] with C = {features.shape[-1]}, got shape "
            f"{list(background.shape)}."
        )

    views = _Views.of(cameras)
    if backend == "gsplat":
        rendered, alpha, depth = _render_features_gsplat(gaussians, views, eps2d, channel_chunk)
    else:
        rendered, alpha, depth = _render_features_torch(gaussians, views, eps2d, max_pairs)
    rendered = rendered + background.reshape(-1, 1, 1) * (1.0 - alpha)
    return RenderOutput(features=rendered, alpha=alpha, depth=depth)


@dataclass
class CompositingWeights:
    """The linear map one render applies to the Gaussians' features in one camera.

    ``features[:, pixel] = Σ weight · gaussians.features[gaussian]`` summed over the pairs of that
    pixel (background 0): the pairs are the torch twin's (pixel, Gaussian) pairs, with
    ``weight = αᵢ Tᵢ``, in the renderer's order (by pixel, front to back within a pixel).

    Attributes:
        pixel: flat pixel index ``row * W + column``. [M]
        gaussian: index of the Gaussian in its batch element. [M]
        weight: the Gaussian's share of the pixel, ``αᵢ Tᵢ`` (0 for skipped pairs). [M]
        alpha: accumulated opacity, bitwise the torch twin's. [1, H, W]
    """

    pixel: torch.Tensor
    gaussian: torch.Tensor
    weight: torch.Tensor
    alpha: torch.Tensor


def compositing_weights(
    gaussians: Gaussians,
    cameras: Cameras,  # [B, V]
    *,
    eps2d: float = 0.3,
    max_pairs: int = 1 << 21,
    dtype: torch.dtype = torch.float32,
) -> list[list[CompositingWeights]]:
    """The (pixel, Gaussian, weight) pairs of :func:`render_features` for every camera, without features.

    Rendering is linear in the features once the geometry is fixed; this returns that linear map
    (the torch twin's mathematics on any device), so that a frozen geometry can be applied to
    many feature sets (see :mod:`snd_hf.splatting.teacher.operator`). Arguments as in
    :func:`render_features`; ``gaussians.features`` may be None. ``dtype`` is the features'
    dtype the weights must match (the renderer computes pixel offsets in it).

    Returns:
        ``weights[b][v]``: :class:`CompositingWeights` of batch element b in camera v.
    """
    _check_cameras(gaussians, cameras)
    if max_pairs < 1:
        raise ValueError(f"`max_pairs` must be a positive integer, got {max_pairs}.")
    views = _Views.of(cameras)
    height, width = cameras.image_size
    weights = []
    for b in range(cameras.extrinsics.shape[0]):
        weights.append([])
        for v in range(cameras.extrinsics.shape[1]):
            splats = views.project(gaussians, b, v, eps2d)
            visible, low, high, bands = _bands(splats, height, width, max_pairs)
            pixels, splat_ids, pair_weights, alphas = [], [], [], []
            for first, last in bands:
                pixel, splat, weight = _band_weights(splats, visible, low, high, width, first, last, dtype)
                pixels.append(pixel + first * width)
                splat_ids.append(splat)
                pair_weights.append(weight)
                alphas.append(_band_alpha(pixel, weight, (last - first) * width))
            alpha = torch.cat(alphas).view(1, height, width)
            weights[-1].append(CompositingWeights(torch.cat(pixels), torch.cat(splat_ids), torch.cat(pair_weights), alpha))
    return weights


@dataclass
class _Views:
    """The target cameras of a render, in the renderer's terms."""

    world_to_camera: torch.Tensor  # [B, V, 4, 4]
    intrinsics: torch.Tensor  # [B, V, 3, 3] in pixels
    near: torch.Tensor  # [B, V]
    far: torch.Tensor  # [B, V]
    height: int
    width: int

    @classmethod
    def of(cls, cameras: Cameras) -> _Views:
        height, width = cameras.image_size
        return cls(
            world_to_camera=torch.linalg.inv(cameras.extrinsics),
            intrinsics=denormalize_intrinsics(cameras.intrinsics, height, width),
            near=cameras.near,
            far=cameras.far,
            height=height,
            width=width,
        )

    def project(self, gaussians: Gaussians, b: int, v: int, eps2d: float) -> _Splats:
        """Batch element ``b``'s Gaussians projected into its camera ``v`` (:func:`_project`)."""
        return _project(
            gaussians.means[b],
            gaussians.covariances[b],
            gaussians.opacities[b],
            self.world_to_camera[b, v],
            self.intrinsics[b, v],
            float(self.near[b, v]),
            float(self.far[b, v]),
            self.height,
            self.width,
            eps2d,
        )

    def render_each(self, render_view) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stack ``render_view(b, v) -> (features [C, H, W], alpha [1, H, W], depth [1, H, W])`` over all views."""
        batch, views = self.world_to_camera.shape[:2]
        outputs = [render_view(b, v) for b in range(batch) for v in range(views)]
        return tuple(torch.stack([output[i] for output in outputs]).unflatten(0, (batch, views)) for i in range(3))


def _render_features_torch(
    gaussians: Gaussians,
    views: _Views,
    eps2d: float = 0.3,
    max_pairs: int = 1 << 21,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-torch twin of :func:`_render_features_gsplat` (no background).

    Returns:
        features [B, V, C, H, W], alpha [B, V, 1, H, W], expected depth [B, V, 1, H, W].
    """
    if max_pairs < 1:
        raise ValueError(f"`max_pairs` must be a positive integer, got {max_pairs}.")

    def render_view(b: int, v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        splats = views.project(gaussians, b, v, eps2d)
        return _composite(splats, gaussians.features[b], views.height, views.width, max_pairs)

    return views.render_each(render_view)


@dataclass
class _Splats:
    """Gaussians projected into one camera (screen space in pixels)."""

    means2d: torch.Tensor  # [G, 2]
    conics: torch.Tensor  # [G, 3] upper triangle (a, b, c) of Σ₂⁻¹
    opacities: torch.Tensor  # [G]
    depths: torch.Tensor  # [G] camera z
    radii: torch.Tensor  # [G, 2] integer extent in px, 0 = culled


def _project(
    means: torch.Tensor,  # [G, 3]
    covariances: torch.Tensor,  # [G, 3, 3]
    opacities: torch.Tensor,  # [G]
    world_to_camera: torch.Tensor,  # [4, 4]
    intrinsics: torch.Tensor,  # [3, 3] in pixels
    near: float,
    far: float,
    height: int,
    width: int,
    eps2d: float,
) -> _Splats:
    """EWA projection and culling of one batch element's Gaussians into one camera (gsplat's twin)."""
    rotation, translation = world_to_camera[:3, :3], world_to_camera[:3, 3]
    means_camera = means @ rotation.T + translation
    covariances_camera = rotation @ covariances @ rotation.T
    x, y, z = means_camera.unbind(-1)
    in_range = (z >= near) & (z <= far)
    z_safe = torch.where(in_range, z, torch.ones_like(z))  # culled splats must not make NaN gradients

    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    # The Jacobian is evaluated at a centre clamped to 1.3x the field of view, as in gsplat.
    margin_x, margin_y = 0.3 * 0.5 * width / fx, 0.3 * 0.5 * height / fy
    tx = z_safe * torch.clamp(x / z_safe, min=-(cx / fx + margin_x), max=(width - cx) / fx + margin_x)
    ty = z_safe * torch.clamp(y / z_safe, min=-(cy / fy + margin_y), max=(height - cy) / fy + margin_y)
    zeros = torch.zeros_like(z)
    jacobian = torch.stack(
        [fx / z_safe, zeros, -fx * tx / z_safe**2, zeros, fy / z_safe, -fy * ty / z_safe**2], dim=-1
    ).unflatten(-1, (2, 3))  # [G, 2, 3]
    covariances2d = jacobian @ covariances_camera @ jacobian.transpose(-1, -2)
    covariances2d = covariances2d + eps2d * torch.eye(2, dtype=means.dtype, device=means.device)
    a, b, c = covariances2d[:, 0, 0], 0.5 * (covariances2d[:, 0, 1] + covariances2d[:, 1, 0]), covariances2d[:, 1, 1]
    det = a * c - b * b
    positive = det > 0
    det_safe = torch.where(positive, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)

    with torch.no_grad():
        visible = in_range & positive & (opacities >= ALPHA_THRESHOLD)
        # Opacity-aware extent (gsplat): beyond it alpha < 1/255, so the splat is skipped anyway.
        extent = torch.sqrt(2.0 * torch.log(opacities.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extent = extent.clamp_max(MAX_EXTENT)
        diagonal = torch.stack([a, c], dim=-1).clamp_min(0.0)
        radii = torch.ceil(extent[:, None] * diagonal.sqrt())
        radii = torch.nan_to_num(radii, nan=0.0, posinf=0.0)
        inside = (
            (means2d[:, 0] + radii[:, 0] > 0)
            & (means2d[:, 0] - radii[:, 0] < width)
            & (means2d[:, 1] + radii[:, 1] > 0)
            & (means2d[:, 1] - radii[:, 1] < height)
        )
        visible &= inside & (radii > 0).any(-1)
        radii = torch.where(visible[:, None], radii, torch.zeros_like(radii)).long()
    return _Splats(means2d=means2d, conics=conics, opacities=opacities, depths=z, radii=radii)


def _composite(
    splats: _Splats,
    features: torch.Tensor,  # [G, C]
    height: int,
    width: int,
    max_pairs: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Front-to-back alpha compositing of one camera over (pixel, splat) pairs, in bands of rows.

    Every visible splat pairs with the pixels of its extent box. Pairs are sorted by pixel, front
    to back within a pixel; the transmittance is a segmented cumulative sum of ``log(1 - α)`` and
    the features are one weighted ``embedding_bag`` per pixel (no [pairs, C] intermediate).

    Returns:
        features [C, H, W], alpha [1, H, W], expected depth [1, H, W] (no background).
    """
    visible, low, high, bands = _bands(splats, height, width, max_pairs)
    values = torch.cat([features, splats.depths[:, None].to(features.dtype)], dim=-1)  # [G, C + 1]
    outputs = [
        _composite_band(splats, values, visible, low, high, width, first, last) for first, last in bands
    ]
    raster = torch.cat(outputs).T.unflatten(-1, (height, width))  # [C + 2, H, W]
    channels = features.shape[-1]
    rendered, depth_sum, alpha = raster[:channels], raster[channels : channels + 1], raster[channels + 1 :]
    return rendered, alpha, depth_sum / alpha.clamp_min(1e-10)


def _bands(
    splats: _Splats, height: int, width: int, max_pairs: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Depth-sorted visible splats, their pixel boxes and the row bands of at most ``max_pairs`` pairs.

    Returns:
        visible [N] splat ids front to back, low [N, 2] and high [N, 2] the inclusive pixel box
        (x, y) of each, and the bands as ``(first row, last row + 1)``.
    """
    visible = torch.nonzero(splats.radii.any(-1)).squeeze(1)
    visible = visible[torch.argsort(splats.depths.detach()[visible], stable=True)]  # front to back
    centre, radius = splats.means2d.detach()[visible], splats.radii[visible]
    # Pixel boxes (inclusive) whose centres the extent can reach, clipped to the image.
    low = torch.floor(centre - radius).long().clamp_min(0)
    high = torch.minimum(torch.ceil(centre + radius).long(), torch.tensor([width - 1, height - 1], device=low.device))
    span = (high - low + 1).clamp_min(0)  # [N, 2]

    # Group rows into bands of at most `max_pairs` pairs (a single row may exceed it).
    pairs_per_row = torch.zeros(height + 1, dtype=torch.long, device=low.device)
    pairs_per_row.index_add_(0, low[:, 1], span[:, 0])
    pairs_per_row.index_add_(0, (high[:, 1] + 1).clamp_max(height), -span[:, 0])
    pairs_per_row = torch.cumsum(pairs_per_row, 0)[:height].tolist()
    bands, start, total = [], 0, 0
    for row, count in enumerate(pairs_per_row):
        if total + count > max_pairs and row > start:
            bands.append((start, row))
            start, total = row, 0
        total += count
    bands.append((start, height))
    return visible, low, high, bands


def _composite_band(
    splats: _Splats,
    values: torch.Tensor,  # [G, C + 1] features and depth
    visible: torch.Tensor,  # [N] depth-sorted splat ids
    low: torch.Tensor,  # [N, 2] first pixel (x, y) of each extent box
    high: torch.Tensor,  # [N, 2] last pixel (x, y)
    width: int,
    first: int,
    last: int,
) -> torch.Tensor:
    """Composite pixel rows ``first:last``. Returns features, depth sum and alpha per pixel. [P, C + 2]"""
    pixels = (last - first) * width
    pixel, splat, weights = _band_weights(splats, visible, low, high, width, first, last, values.dtype)
    # No early return for bands without pairs (nothing visible, zero opacity, no Gaussians): the empty
    # gathers keep the zeros in the autograd graph, so a loss on them backpropagates zero gradients.
    per_pixel = torch.bincount(pixel, minlength=pixels)
    offsets = torch.cumsum(per_pixel, 0) - per_pixel  # first pair of every pixel
    accumulated = F.embedding_bag(splat, values, offsets, mode="sum", per_sample_weights=weights)  # [P, C + 1]
    return torch.cat([accumulated, _band_alpha(pixel, weights, pixels)[:, None]], dim=-1)


def _band_alpha(pixel: torch.Tensor, weights: torch.Tensor, pixels: int) -> torch.Tensor:
    """Accumulated opacity ``Σ αᵢ Tᵢ`` of each of a band's ``pixels`` from its pairs. [P]"""
    return torch.zeros(pixels, dtype=weights.dtype, device=weights.device).index_add(0, pixel, weights)


def _band_weights(
    splats: _Splats,
    visible: torch.Tensor,  # [N] depth-sorted splat ids
    low: torch.Tensor,  # [N, 2]
    high: torch.Tensor,  # [N, 2]
    width: int,
    first: int,
    last: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (pixel, splat, weight) pairs of pixel rows ``first:last``, sorted by pixel, front to back.

    ``weight = αᵢ Tᵢ`` is the splat's share of the pixel (0 past the transmittance threshold;
    pairs with ``αᵢ < 1/255`` are left out); the pixel is
    counted from the band's first row (``(row - first) * width + column``). Pixel offsets and
    transmittances are computed in ``dtype`` (the features' dtype when rendering).

    Returns:
        pixel [M], splat [M] (indices into the projected Gaussians), weight [M].
    """
    top = low[:, 1].clamp_min(first)
    rows = (high[:, 1].clamp_max(last - 1) - top + 1).clamp_min(0)
    columns = (high[:, 0] - low[:, 0] + 1).clamp_min(0)
    # Most boxes are a few pixels wide: those are paired by broadcasting over a fixed box, the
    # rest one pair at a time. Both keep only pairs with alpha >= 1/255: skipped pairs change
    # neither the transmittance nor the sums.
    small = (rows <= DENSE_BOX) & (columns <= DENSE_BOX)
    dense = _box_pairs(splats, visible, torch.nonzero(small).squeeze(1), low[:, 0], top, rows, columns, dtype)
    listed = _listed_pairs(splats, visible, torch.nonzero(~small).squeeze(1), low[:, 0], top, rows, columns, dtype)
    pixel_x, pixel_y, rank, alpha = (torch.cat(parts) for parts in zip(dense, listed))
    pixel = (pixel_y - first) * width + pixel_x
    # Sort by pixel, front to back within a pixel (rank is the depth order).
    order = torch.argsort(pixel * len(visible) + rank)
    pixel, alpha = pixel.index_select(0, order), alpha.index_select(0, order)
    splat = visible.index_select(0, rank.index_select(0, order))
    pixels = (last - first) * width
    log_pass = torch.log1p(-alpha)  # log(1 - alpha)

    # Segmented cumulative sum per pixel (float64: the running sum spans the whole band).
    per_pixel = torch.bincount(pixel, minlength=pixels)
    offsets = torch.cumsum(per_pixel, 0) - per_pixel  # first pair of every pixel
    running = torch.cumsum(log_pass.double(), 0)
    first_pair = torch.repeat_interleave(offsets, per_pixel)  # [M] first pair of each pair's pixel
    before_pixel = F.embedding(first_pair, (running - log_pass.double())[:, None])[:, 0]  # [M] sum before each pixel
    log_after = (running - before_pixel).to(dtype)
    # A splat counts only if the pixel's transmittance stays above the threshold after it.
    counted = log_after > math.log(TRANSMITTANCE_THRESHOLD)
    weights = torch.where(counted, alpha * torch.exp(log_after - log_pass), torch.zeros_like(alpha))
    return pixel, splat, weights


def _pair_alpha(
    splats: _Splats, splat: torch.Tensor, pixel_x: torch.Tensor, pixel_y: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha of splats at pixels (broadcast shapes) and whether the pair counts (α >= 1/255)."""
    # Gathers of differentiable tensors go through F.embedding, not indexing: its CPU backward sums
    # each row's pairs in a fixed order, so gradients are bit-identical at any thread count
    # (indexing's backward, index_put with accumulate, is not).
    table = torch.cat([splats.means2d, splats.conics, splats.opacities[:, None]], dim=-1)  # [G, 6]
    gathered = F.embedding(splat, table)  # [..., 6]
    conic, opacity = gathered[..., 2:5], gathered[..., 5]
    delta_x = (pixel_x.to(dtype) + 0.5) - gathered[..., 0]
    delta_y = (pixel_y.to(dtype) + 0.5) - gathered[..., 1]
    sigma = 0.5 * (conic[..., 0] * delta_x**2 + conic[..., 2] * delta_y**2) + conic[..., 1] * delta_x * delta_y
    # sigma < 0 only for non-positive-definite conics; such pairs are skipped (as in gsplat).
    # Beyond SIGMA_CUTOFF alpha < 1/255 anyway; the cap avoids slow denormal exponentials.
    alpha = torch.clamp_max(opacity * torch.exp(-sigma.clamp(0.0, SIGMA_CUTOFF)), MAX_ALPHA)
    return alpha, (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)


def _box_pairs(splats, visible, ranks, left, top, rows, columns, dtype):
    """Pairs of the splats ``visible[ranks]`` whose boxes fit ``DENSE_BOX`` pixels square, by broadcasting.

    Returns:
        pixel_x, pixel_y, rank (position in ``visible``), alpha of the kept pairs. [M] each
    """
    offsets = torch.arange(DENSE_BOX, device=visible.device)
    pixel_x = left.index_select(0, ranks)[:, None, None] + offsets  # [S, 1, K]
    pixel_y = top.index_select(0, ranks)[:, None, None] + offsets[:, None]  # [S, K, 1]
    inside = (offsets < columns.index_select(0, ranks)[:, None, None]) & (offsets[:, None] < rows.index_select(0, ranks)[:, None, None])
    alpha, kept = _pair_alpha(splats, visible.index_select(0, ranks)[:, None, None], pixel_x, pixel_y, dtype)
    box, dy, dx = torch.nonzero(inside & kept, as_tuple=True)
    return pixel_x[box, 0, dx], pixel_y[box, dy, 0], ranks.index_select(0, box), alpha[box, dy, dx]


def _listed_pairs(splats, visible, ranks, left, top, rows, columns, dtype):
    """Pairs of the splats ``visible[ranks]`` with larger boxes, listed pixel by pixel (as :func:`_box_pairs`)."""
    rows, columns = rows.index_select(0, ranks), columns.index_select(0, ranks)
    counts = rows * columns  # pairs per splat in this band
    owner = torch.repeat_interleave(torch.arange(len(ranks), device=visible.device), counts)
    local = torch.arange(len(owner), device=visible.device) - (torch.cumsum(counts, 0) - counts).index_select(0, owner)
    row = torch.div(local, columns.index_select(0, owner), rounding_mode="floor")
    rank = ranks.index_select(0, owner)
    pixel_x = left.index_select(0, rank) + local - row * columns.index_select(0, owner)
    pixel_y = top.index_select(0, rank) + row
    alpha, kept = _pair_alpha(splats, visible.index_select(0, rank), pixel_x, pixel_y, dtype)
    kept = torch.nonzero(kept).squeeze(1)
    return pixel_x[kept], pixel_y[kept], rank[kept], alpha[kept]


def _render_features_gsplat(
    gaussians: Gaussians,
    views: _Views,
    eps2d: float = 0.3,
    channel_chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """gsplat's CUDA rasteriser, one call per view (near/far are per view; gsplat takes scalars).

    Returns:
        features [B, V, C, H, W], alpha [B, V, 1, H, W], expected depth [B, V, 1, H, W].
    """
    from gsplat import rasterization  # lazy: the CUDA extension loads on first use

    channels = gaussians.features.shape[-1]
    if channel_chunk is None:
        # The expected depth travels as one more channel.
        channel_chunk = channels + 1 if channels + 1 <= GSPLAT_MAX_CHANNELS else GSPLAT_MAX_CHANNELS - 1
    world_to_camera = views.world_to_camera.float().contiguous()
    intrinsics = views.intrinsics.float().contiguous()
    dtype = gaussians.features.dtype

    def render_view(b: int, v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        colors, alphas, _ = rasterization(
            means=gaussians.means[b].float().contiguous(),
            quats=None,
            scales=None,
            opacities=gaussians.opacities[b].float().contiguous(),
            colors=gaussians.features[b].float().contiguous(),
            viewmats=world_to_camera[b, v : v + 1],
            Ks=intrinsics[b, v : v + 1],
            width=views.width,
            height=views.height,
            near_plane=float(views.near[b, v]),
            far_plane=float(views.far[b, v]),
            eps2d=eps2d,
            sh_degree=None,
            render_mode="RGB+ED",
            channel_chunk=channel_chunk,
            covars=gaussians.covariances[b].float().contiguous(),
        )  # [1, H, W, C + 1], [1, H, W, 1]
        colors, alphas = colors[0].permute(2, 0, 1).to(dtype), alphas[0].permute(2, 0, 1).to(dtype)
        return colors[:channels], alphas, colors[channels:]

    return views.render_each(render_view)


def _check_inputs(gaussians: Gaussians, cameras: Cameras) -> torch.Tensor:
    _check_cameras(gaussians, cameras)
    if gaussians.features is None:
        raise ValueError("`gaussians` carry no features; attach them with `gaussians.with_features(f)`.")
    return gaussians.features


def _check_cameras(gaussians: Gaussians, cameras: Cameras) -> None:
    if not isinstance(gaussians, Gaussians):
        raise TypeError(f"`gaussians` must be a Gaussians, got {type(gaussians).__name__}.")
    if not isinstance(cameras, Cameras):
        raise TypeError(
            f"`cameras` must be a Cameras (a scene batch's views: `Cameras.from_views(views)`), got {type(cameras).__name__}."
        )
    # Cameras checks its fields against each other; here only the leading [B, V] against the Gaussians.
    batch = gaussians.means.shape[0]
    if cameras.extrinsics.ndim != 4 or cameras.extrinsics.shape[0] != batch:
        raise ValueError(
            f"`cameras` must be [B, V] cameras with B = {batch} (from the Gaussians), got extrinsics of shape "
            f"{list(cameras.extrinsics.shape)}."
        )
