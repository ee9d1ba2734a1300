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


@pytest.mark.parametrize("z, opacity, count", [(-2.0, 1.0, 1), (2.0, 0.0, 1), (2.0, 1.0, 0)], ids=["behind", "transparent", "empty"])
def test_gsplat_renders_nothing_visible_in_the_graph_like_the_twin(z, opacity, count):
    device = torch.device("cuda")
    means = torch.tensor([[0.0, 0.0, z]] * count, device=device).reshape(1, count, 3).requires_grad_()
    covariances = (0.01 * torch.eye(3, device=device)).expand(1, count, 3, 3).clone().requires_grad_()
    opacities = torch.full((1, count), opacity, device=device, requires_grad=True)
    features = torch.ones(1, count, 4, device=device, requires_grad=True)
    cameras = [torch.eye(4).expand(1, 1, 4, 4), torch.tensor([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]]).expand(1, 1, 3, 3)]
    cameras += [torch.full((1, 1), 0.1), torch.full((1, 1), 10.0)]
    out = render_features(
        Gaussians(means, covariances, opacities, features), *[c.to(device) for c in cameras], (16, 24), backend="gsplat", background=0.5
    )
    assert out.features.requires_grad and out.alpha.requires_grad
    torch.testing.assert_close(out.features, torch.full_like(out.features, 0.5))
    (out.features.sum() + out.alpha.sum()).backward()
    for tensor in (means, covariances, opacities, features):
        assert tensor.grad is None or tensor.grad.abs().sum() == 0
