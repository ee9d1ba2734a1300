"""Correspondence: exact geometry gives near-perfect recall, random features give chance."""

from __future__ import annotations

import math

import torch

from snd_hf.cameras import camera_rays, unproject_depth
from snd_hf.eval.correspondence import (
    correspondence_errors,
    correspondence_matches,
    ratio_test_matches,
    summarize_correspondence,
)

HEIGHT, WIDTH = 60, 80


def _rotation_y(degrees: float) -> torch.Tensor:
    angle = math.radians(degrees)
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _plane_pair(degrees: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two cameras looking at the world plane z = 4; the second is rotated about y and shifted."""
    extrinsics = torch.eye(4).repeat(2, 1, 1)
    extrinsics[1, :3, :3] = _rotation_y(degrees)
    extrinsics[1, :3, 3] = torch.tensor([-0.5, 0.1, 0.2])
    intrinsics = torch.tensor([[0.8, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]]).repeat(2, 1, 1)
    rays = camera_rays(intrinsics, HEIGHT, WIDTH)  # [2, H, W, 3]
    world_z = torch.einsum("vij,vhwj->vhwi", extrinsics[:, :3, :3], rays)[..., 2]
    depths = (4.0 - extrinsics[:, 2, 3, None, None]) / world_z
    return depths, extrinsics, intrinsics


def _positional_features(points: torch.Tensor) -> torch.Tensor:
    """Sin/cos encoding of world x and y. [V, H, W, 3] → [V, C, H, W]"""
    frequencies = 2.0 ** torch.arange(4.0)
    angles = points[..., :2, None] * frequencies  # [V, H, W, 2, F]
    encoded = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)
    return encoded.permute(0, 3, 1, 2)


def test_ratio_test_prefers_unambiguous_matches():
    features1 = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]), dim=1)
    # Row 1 lies halfway between two candidates (ambiguous); row 0 is close to candidate 0 only.
    features0 = torch.nn.functional.normalize(torch.tensor([[1.0, 0.02], [0.96, 0.4]]), dim=1)
    index0, index1, weight = ratio_test_matches(features0, features1, num_matches=1)
    assert index0.tolist() == [0] and index1.tolist() == [0]
    assert 0 < float(weight[0]) < 1


def test_ground_truth_coordinates_match_almost_perfectly():
    depths, extrinsics, intrinsics = _plane_pair(16.0)  # ~80% of view 0 is visible in view 1
    points = unproject_depth(depths, extrinsics, intrinsics)
    errors = correspondence_errors(_positional_features(points), depths, extrinsics, intrinsics, num_matches=1000)
    assert errors.numel() == 1000
    summary = summarize_correspondence([errors], [16.0])
    assert summary["recall@5px"] > 0.99 and float(errors.median()) < 0.5
    assert summary["recall@10px_15-30deg"] == summary["recall@10px"]
    assert math.isnan(summary["recall@10px_0-15deg"])


def test_random_features_are_near_chance():
    depths, extrinsics, intrinsics = _plane_pair(5.0)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 16, HEIGHT, WIDTH, generator=generator)
    errors = correspondence_errors(features, depths, extrinsics, intrinsics, num_matches=500)
    recalls = summarize_correspondence([errors], [5.0])
    # A 5 px disc covers ~2% of a 60x80 grid; a 20 px disc ~25%.
    assert recalls["recall@5px"] < 0.1
    assert recalls["recall@20px"] < 0.45


def test_invalid_depth_is_never_matched():
    depths, extrinsics, intrinsics = _plane_pair(10.0)
    depths[0, :, : WIDTH // 2] = 0
    points = unproject_depth(depths.clamp_min(1e-3), extrinsics, intrinsics)
    errors = correspondence_errors(_positional_features(points), depths, extrinsics, intrinsics, num_matches=5000)
    assert errors.numel() == HEIGHT * (WIDTH - WIDTH // 2)


def test_strided_matches_come_from_the_strided_grid_and_keep_their_ground_truth():
    depths, extrinsics, intrinsics = _plane_pair(16.0)
    points = unproject_depth(depths, extrinsics, intrinsics)
    matches = correspondence_matches(_positional_features(points), depths, extrinsics, intrinsics, num_matches=400, stride=2)
    assert matches.xy0.shape == (400, 2)
    # Only even rows and columns of view 0 are queried (pixel centres at 2k + 0.5).
    assert torch.all((matches.xy0 - 0.5) % 2 == 0)
    torch.testing.assert_close(matches.errors, (matches.truth - matches.xy1).norm(dim=-1))
    assert float(matches.errors.median()) < 0.5
    full = correspondence_errors(_positional_features(points), depths, extrinsics, intrinsics, num_matches=400)
    assert float(full.median()) < 0.5
