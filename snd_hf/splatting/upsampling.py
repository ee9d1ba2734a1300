"""Upsampling of the teacher's patch features to the context image size, and its linear map.

Two grids place the tokens in the image:

- ``"original"`` (the paper's, ``vit/utils.py``): an align-corners grid, token ``(0, 0)`` on the
  first pixel and token ``(h-1, w-1)`` on the last, bilinear between them, mask-aware or plain.
  At small token grids this misplaces the features: a ViT token describes its patch, whose
  centre is half a patch inside the image, so token → upsample → area-pool back is not the
  identity even within one view.
- ``"patch_aligned"``: every pixel takes the token of the patch it lies in (``nearest-exact`` on
  the patch grid, which places each token at its patch centre). Token → upsample → area-pool is
  the identity when the image is a whole number of patches. One token per pixel, so there is
  nothing for mask-awareness to renormalise.

:func:`upsample_features` runs either; :func:`upsampling_weights` returns the same map as
neighbour indices and weights, for :mod:`snd_hf.splatting.teacher`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .masks import mask_aware_upsample, mask_aware_upsample_weights

Upsampling = Literal["original", "patch_aligned"]
UPSAMPLING_MODES = ("original", "patch_aligned")


def upsample_features(
    features: torch.Tensor,  # [N, C, h, w]
    size: tuple[int, int],
    *,
    mode: Upsampling = "original",
    masks: torch.Tensor | None = None,  # [N, H, W]
) -> torch.Tensor:
    """Upsample patch features to ``size`` on the chosen grid.

    Args:
        features: patch features. [N, C, h, w]
        size: ``(H, W)``.
        mode: ``"original"`` (align-corners bilinear) or ``"patch_aligned"`` (each pixel takes its patch's token).
        masks: ``"original"`` only: instance ids at ``size`` for mask-aware upsampling, or None
            for plain bilinear (the paper's ablation). [N, H, W]

    Returns:
        upsampled features. [N, C, H, W]
    """
    _check_mode(mode)
    if mode == "patch_aligned":
        # Deviation (upsampling grid, optional): each pixel takes its patch's token.
        return F.interpolate(features, size=size, mode="nearest-exact")
    if masks is not None:
        return mask_aware_upsample(features, masks)
    return F.interpolate(features, size=size, mode="bilinear", align_corners=True)


def upsampling_weights(
    low_size: tuple[int, int],
    size: tuple[int, int],
    *,
    mode: Upsampling = "original",
    masks: torch.Tensor | None = None,  # [N, H, W]
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear map of :func:`upsample_features` with the same arguments.

    ``upsampled[n, :, y, x] = Σ_k weights[n, k, y, x] · features[n, :, neighbour[k, y, x]]`` with the
    features flattened to ``h * w`` (row-major).

    Returns:
        neighbour: flat low-resolution index of each source token. [K, H, W]
        weights: their weights. [N, K, H, W] (N = 1 without masks). K = 4 for ``"original"``, 1 for
        ``"patch_aligned"``.
    """
    _check_mode(mode)
    height, width = size
    if masks is not None:
        device = masks.device
    if mode == "patch_aligned":
        # torch's own nearest-exact index, read off an image of token numbers.
        numbers = torch.arange(low_size[0] * low_size[1], device=device, dtype=torch.float64)
        neighbour = F.interpolate(numbers.view(1, 1, *low_size), size=size, mode="nearest-exact")[0].long()
        return neighbour, torch.ones(1, 1, height, width, device=device, dtype=dtype)
    if masks is None:
        # One segment everywhere: mask-aware weights reduce to plain bilinear.
        masks = torch.zeros(1, height, width, dtype=torch.long, device=device)
    return mask_aware_upsample_weights(masks, low_size, dtype)


def _check_mode(mode: str) -> None:
    if mode not in UPSAMPLING_MODES:
        raise ValueError(f"`upsample` must be one of {list(UPSAMPLING_MODES)}, got {mode!r}.")
