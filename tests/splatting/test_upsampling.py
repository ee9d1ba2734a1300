"""Upsampling grids: patch-aligned is the exact inverse of area pooling; the linear maps equal the functions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from snd_hf.splatting.upsampling import upsample_features, upsampling_weights


def _apply(neighbour: torch.Tensor, weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Σ_k weights[n, k] · features[n, :, neighbour[k]] for features [N, C, h, w]. [N, C, H, W]"""
    flat = features.flatten(2)  # [N, C, h·w]
    gathered = flat[:, :, neighbour]  # [N, C, K, H, W]
    return (gathered * weights[:, None]).sum(2)


@pytest.mark.parametrize("grid", [(3, 4), (6, 8)])
def test_patch_aligned_upsampling_then_area_pooling_is_the_identity(grid):
    tokens = torch.randn(2, 5, *grid, dtype=torch.float64)  # float64: averaging 196 copies is exact to 1e-15
    size = (grid[0] * 14, grid[1] * 14)
    upsampled = upsample_features(tokens, size, mode="patch_aligned")
    # Every pixel holds its own patch's token...
    torch.testing.assert_close(upsampled[..., 20, 30], tokens[..., 20 // 14, 30 // 14], rtol=0, atol=0)
    # ...so pooling each patch gives the tokens back exactly.
    torch.testing.assert_close(F.interpolate(upsampled, size=grid, mode="area"), tokens, rtol=0, atol=1e-12)


def test_the_original_align_corners_grid_is_not_the_identity_at_small_grids():
    tokens = torch.randn(1, 8, 3, 4)
    upsampled = upsample_features(tokens, (42, 56), mode="original")
    round_trip = F.interpolate(upsampled, size=(3, 4), mode="area")
    # A token's value sits on the patch corner, so the patch average mixes in its neighbours.
    assert (round_trip - tokens).abs().max() > 0.1


@pytest.mark.parametrize("mode", ["original", "patch_aligned"])
@pytest.mark.parametrize("with_masks", [True, False])
def test_upsampling_weights_reproduce_upsample_features(mode, with_masks):
    torch.manual_seed(0)
    tokens = torch.randn(3, 6, 4, 5)
    size = (50, 61)  # not whole patches: the patch-aligned grid still takes each pixel's patch
    coarse = torch.randint(0, 3, (3, 1, 7, 8)).float()  # segments of about 7x8 pixels
    masks = F.interpolate(coarse, size=size, mode="nearest")[:, 0].long() if with_masks else None
    expected = upsample_features(tokens, size, mode=mode, masks=masks)
    neighbour, weights = upsampling_weights((4, 5), size, mode=mode, masks=masks)
    torch.testing.assert_close(_apply(neighbour, weights, tokens), expected, rtol=1e-5, atol=1e-5)


def test_invalid_mode_is_named():
    with pytest.raises(ValueError, match="upsample"):
        upsample_features(torch.zeros(1, 1, 2, 2), (4, 4), mode="nearest")
