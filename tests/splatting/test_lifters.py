"""DepthLifter: analytic Gaussians on planes, invalid depth, and a render round trip."""

from __future__ import annotations

import math

import pytest
import torch

from snd_hf.cameras import Cameras
from snd_hf.splatting.lifters import DepthLifter
from snd_hf.splatting.render import render_features

HEIGHT, WIDTH, FX, FY = 6, 8, 10.0, 12.0


def _inputs(depth: torch.Tensor, extrinsics: torch.Tensor | None = None) -> tuple[torch.Tensor, Cameras, torch.Tensor]:
    """A lifter's images [B, V, 3, H, W], cameras [B, V] and the given depth [B, V, H', W']."""
    batch, views = depth.shape[:2]
    intrinsics = torch.tensor([[FX / WIDTH, 0.0, 0.5], [0.0, FY / HEIGHT, 0.5], [0.0, 0.0, 1.0]]).expand(batch, views, 3, 3)
    if extrinsics is None:
        extrinsics = torch.eye(4).expand(batch, views, 4, 4)
    near, far = torch.full((batch, views), 0.1), torch.full((batch, views), 10.0)
    return torch.rand(batch, views, 3, HEIGHT, WIDTH), Cameras(extrinsics, intrinsics, near, far, (HEIGHT, WIDTH)), depth


def _rotation_about_y(angle: float) -> torch.Tensor:
    pose = torch.eye(4)
    pose[0, 0], pose[0, 2], pose[2, 0], pose[2, 2] = math.cos(angle), math.sin(angle), -math.sin(angle), math.cos(angle)
    pose[:3, 3] = torch.tensor([0.3, -0.1, 0.5])
    return pose


def test_isotropic_gaussians_on_a_fronto_parallel_plane():
    depth = torch.full((1, 2, HEIGHT, WIDTH), 2.0)
    depth[:, 1] = 4.0
    gaussians = DepthLifter(scale=0.5, opacity=0.8)(*_inputs(depth))
    assert gaussians.means.shape == (1, 2 * HEIGHT * WIDTH, 3)
    # Ordered b (v h w): view 1, row 2, column 5.
    index = HEIGHT * WIDTH + 2 * WIDTH + 5
    expected_mean = torch.tensor([(5.5 - WIDTH / 2) / FX * 4.0, (2.5 - HEIGHT / 2) / FY * 4.0, 4.0])
    torch.testing.assert_close(gaussians.means[0, index], expected_mean)
    sigma = 0.5 * 4.0 / math.sqrt(FX * FY)
    torch.testing.assert_close(gaussians.covariances[0, index], sigma**2 * torch.eye(3))
    torch.testing.assert_close(gaussians.opacities, torch.full((1, 2 * HEIGHT * WIDTH), 0.8))


def test_surface_gaussians_on_a_fronto_parallel_plane_are_pixel_discs():
    pose = _rotation_about_y(0.4)
    gaussians = DepthLifter(scale=0.5, footprint="surface", thickness=0.1)(
        *_inputs(torch.full((1, 1, HEIGHT, WIDTH), 2.0), pose[None, None])
    )
    sigma_x, sigma_y = 0.5 * 2.0 / FX, 0.5 * 2.0 / FY
    sigma_normal = 0.1 * 0.5 * 2.0 / math.sqrt(FX * FY)
    camera = torch.diag(torch.tensor([sigma_x**2, sigma_y**2, sigma_normal**2]))
    expected = pose[:3, :3] @ camera @ pose[:3, :3].T  # rotated into the world
    for index in (0, 13, HEIGHT * WIDTH - 1):  # corners use one-sided differences
        torch.testing.assert_close(gaussians.covariances[0, index], expected, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(gaussians.means[0, 0], pose[:3, :3] @ torch.tensor([-3.5 / FX * 2, -2.5 / FY * 2, 2.0]) + pose[:3, 3])


def test_surface_gaussians_on_a_tilted_plane_are_thin_along_its_normal():
    # The plane z = 2 + 0.5 x (camera frame); its normal is (-0.5, 0, 1) normalised.
    rows, columns = torch.meshgrid(torch.arange(HEIGHT) + 0.5, torch.arange(WIDTH) + 0.5, indexing="ij")
    ray_x = (columns - WIDTH / 2) / FX
    depth = (2.0 / (1 - 0.5 * ray_x))[None, None]
    gaussians = DepthLifter(footprint="surface", thickness=0.1)(*_inputs(depth))
    normal = torch.nn.functional.normalize(torch.tensor([-0.5, 0.0, 1.0]), dim=0)
    covariances = gaussians.covariances[0]
    along_normal = torch.einsum("i,gij,j->g", normal, covariances, normal)
    largest = torch.linalg.eigvalsh(covariances)[:, -1]
    assert (along_normal < 0.02 * largest).all()
    # The smallest axis is the normal.
    _, vectors = torch.linalg.eigh(covariances)
    assert (vectors[:, :, 0] @ normal).abs().min() > 0.999


def test_depth_edges_do_not_stretch_the_discs():
    depth = torch.full((1, 1, HEIGHT, WIDTH), 2.0)
    depth[..., WIDTH // 2 :] = 6.0  # a step edge
    gaussians = DepthLifter(scale=0.5, footprint="surface")(*_inputs(depth))
    covariances = gaussians.covariances[0].view(HEIGHT, WIDTH, 3, 3)
    # Both sides of the edge keep their own plane's pixel step.
    torch.testing.assert_close(covariances[:, WIDTH // 2 - 1, 0, 0], torch.full((HEIGHT,), (0.5 * 2.0 / FX) ** 2))
    torch.testing.assert_close(covariances[:, WIDTH // 2, 0, 0], torch.full((HEIGHT,), (0.5 * 6.0 / FX) ** 2))


@pytest.mark.parametrize("footprint", ["isotropic", "surface"])
def test_invalid_depth_gets_zero_opacity_and_finite_values(footprint):
    depth = torch.full((2, 1, HEIGHT, WIDTH), 3.0)
    depth[0, 0, 2, 3] = 0.0
    depth[1, 0, :, :2] = float("nan")
    depth[1, 0, 4, :] = 0.0
    gaussians = DepthLifter(footprint=footprint)(*_inputs(depth))
    opacities = gaussians.opacities.view(2, HEIGHT, WIDTH)
    assert opacities[0, 2, 3] == 0 and (opacities[1, :, :2] == 0).all() and (opacities[1, 4] == 0).all()
    assert int((opacities == 1).sum()) == 2 * HEIGHT * WIDTH - 1 - (HEIGHT * 2 + WIDTH - 2)
    assert torch.isfinite(gaussians.means).all() and torch.isfinite(gaussians.covariances).all()


def test_depth_maps_of_another_size_are_resized_nearest():
    inputs = _inputs(torch.full((1, 1, 2 * HEIGHT, 2 * WIDTH), 2.0))
    assert DepthLifter()(*inputs).means.shape == (1, HEIGHT * WIDTH, 3)


@pytest.mark.parametrize("footprint", ["isotropic", "surface"])
def test_lifted_views_render_back_into_themselves(footprint):
    rows, columns = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
    depth = (3.0 + 0.05 * columns + 0.03 * rows).float()[None, None]
    images, cameras, depth = _inputs(depth, _rotation_about_y(0.2)[None, None])
    gaussians = DepthLifter(scale=0.5, footprint=footprint)(images, cameras, depth)
    out = render_features(gaussians.with_features(torch.ones(1, HEIGHT * WIDTH, 1)), cameras, backend="torch")
    assert (out.alpha > 0.99).all()
    # The expected depth mixes in the 3x3 neighbours (at most 0.08 away on this plane).
    torch.testing.assert_close(out.depth[0, 0, 0], depth[0, 0], atol=0.08, rtol=0)


def test_invalid_arguments_raise_errors_naming_them():
    with pytest.raises(ValueError, match="footprint"):
        DepthLifter(footprint="ellipse")
    with pytest.raises(ValueError, match="opacity"):
        DepthLifter(opacity=1.5)
    images, cameras, depth = _inputs(torch.ones(1, 1, HEIGHT, WIDTH))
    with pytest.raises(ValueError, match=r"`depth` \[1, 1, H, W\] is required by DepthLifter"):
        DepthLifter()(images, cameras)
    with pytest.raises(ValueError, match=r"`depth` must have shape \[1, 1, H, W\], got \[1, 6, 8\]"):
        DepthLifter()(images, cameras, depth[0])
    with pytest.raises(TypeError, match="`cameras` must be a Cameras"):
        DepthLifter()(images, None, depth)
