"""The pure-torch renderer against gsplat's CUDA kernels (needs a CUDA device)."""

from __future__ import annotations

import pytest
import torch

from snd_hf.splatting.gaussians import Gaussians
from snd_hf.splatting.render import render_features

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat's kernels need a CUDA device"),
]


def _random_scene(batch: int, views: int, count: int, channels: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    means = torch.cat(
        [torch.rand(batch, count, 2, generator=generator) * 2 - 1, 2 + 3 * torch.rand(batch, count, 1, generator=generator)], -1
    )
    factors = 0.05 * torch.randn(batch, count, 3, 3, generator=generator)
    covariances = factors @ factors.transpose(-1, -2) + 1e-4 * torch.eye(3)
    opacities = torch.rand(batch, count, generator=generator)
    features = torch.randn(batch, count, channels, generator=generator)
    angle = 0.1 * torch.randn(batch, views, generator=generator)
    extrinsics = torch.eye(4).repeat(batch, views, 1, 1)
    extrinsics[..., 0, 0], extrinsics[..., 0, 2] = torch.cos(angle), torch.sin(angle)
    extrinsics[..., 2, 0], extrinsics[..., 2, 2] = -torch.sin(angle), torch.cos(angle)
    extrinsics[..., :3, 3] = 0.2 * torch.randn(batch, views, 3, generator=generator)
    intrinsics = torch.tensor([[0.9, 0.0, 0.5], [0.0, 1.2, 0.5], [0.0, 0.0, 1.0]]).repeat(batch, views, 1, 1)
    near = torch.full((batch, views), 1.0)
    far = torch.full((batch, views), 4.5)
    return Gaussians(means, covariances, opacities, features), extrinsics, intrinsics, near, far


@pytest.mark.parametrize("channels", [3, 32, 384])
@pytest.mark.parametrize("batch, views", [(1, 1), (2, 3)])
def test_torch_twin_matches_gsplat(batch, views, channels):
    gaussians, *cameras = _random_scene(batch, views, 3000, channels, seed=channels + views)
    size = (48, 64)
    reference = render_features(gaussians, *cameras, size, backend="torch")
    on_gpu = Gaussians(*(t.cuda() for t in (gaussians.means, gaussians.covariances, gaussians.opacities, gaussians.features)))
    rendered = render_features(on_gpu, *(c.cuda() for c in cameras), size, backend="gsplat")
    for name in ("features", "alpha", "depth"):
        expected, actual = getattr(reference, name), getattr(rendered, name).cpu()
        scale = expected.abs().max().clamp_min(1e-6)
        assert (actual - expected).abs().max() / scale < 1e-4, name


def test_gsplat_gradients_match_the_torch_twin():
    gaussians, *cameras = _random_scene(1, 2, 500, 8, seed=7)
    size = (24, 32)
    cotangent = torch.randn(1, 2, 8, *size)
    gradients = []
    for backend, device in (("torch", "cpu"), ("gsplat", "cuda")):
        features = gaussians.features.to(device).requires_grad_()
        moved = Gaussians(gaussians.means.to(device), gaussians.covariances.to(device), gaussians.opacities.to(device), features)
        out = render_features(moved, *(c.to(device) for c in cameras), size, backend=backend)
        (out.features * cotangent.to(device)).sum().backward()
        gradients.append(features.grad.cpu())
    torch.testing.assert_close(gradients[1], gradients[0], atol=1e-4, rtol=1e-4)
