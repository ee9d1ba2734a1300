"""The pure-torch renderer against gsplat's CUDA kernels (needs a CUDA device).

Outputs (features, alpha, expected depth) and gradients (w.r.t. means, covariances, opacities and
features) of both backends on the same scenes: random Gaussians in front of the cameras, some
behind them, tiny and huge ones, per-view near/far and several target views. Each comparison's
max error is recorded (``record_max_error``, see tests/conftest.py) before it is checked, so the
GPU suite reports the figures of failing comparisons too.
"""

from __future__ import annotations

import pytest
import torch

from snd_hf.cameras import Cameras
from snd_hf.splatting.gaussians import Gaussians
from snd_hf.splatting.render import render_features

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat's kernels need a CUDA device"),
]

DEVICE, BACKEND = "cuda", "gsplat"  # the side under test; the torch twin on the same device is the reference
OUTPUT_TOLERANCE = 1e-4  # max error relative to the twin's largest magnitude, per output
GRADIENT_TOLERANCE = 1e-3  # the same for gradients (gsplat accumulates them with float atomics)


def _random_scene(batch: int, views: int, count: int, channels: int, seed: int, *, extremes: bool = False):
    """Gaussians 2-5 units in front of V cameras turned a little about y; with ``extremes``, a tenth of
    them behind the cameras, a tenth tiny (σ 1e-3) and a tenth huge (σ 2), and per-view near/far
    that cull different Gaussians in different views."""
    generator = torch.Generator().manual_seed(seed)
    depth = 2 + 3 * torch.rand(batch, count, 1, generator=generator)
    means = torch.cat([torch.rand(batch, count, 2, generator=generator) * 2 - 1, depth], -1)
    factors = 0.05 * torch.randn(batch, count, 3, 3, generator=generator)
    covariances = factors @ factors.transpose(-1, -2) + 1e-4 * torch.eye(3)
    near, far = torch.full((batch, views), 1.0), torch.full((batch, views), 4.5)
    if extremes:
        tenth = count // 10
        means[:, :tenth, 2] *= -1  # behind every camera
        covariances[:, tenth : 2 * tenth] = 1e-6 * torch.eye(3)  # sub-pixel: eps2d dominates
        covariances[:, 2 * tenth : 3 * tenth] = 4.0 * torch.eye(3)  # covers the whole image
        near = 1.0 + 1.5 * torch.rand(batch, views, generator=generator)
        far = near + 1.0 + 2.0 * torch.rand(batch, views, generator=generator)
    opacities = torch.rand(batch, count, generator=generator)
    features = torch.randn(batch, count, channels, generator=generator)
    angle = 0.1 * torch.randn(batch, views, generator=generator)
    extrinsics = torch.eye(4).repeat(batch, views, 1, 1)
    extrinsics[..., 0, 0], extrinsics[..., 0, 2] = torch.cos(angle), torch.sin(angle)
    extrinsics[..., 2, 0], extrinsics[..., 2, 2] = -torch.sin(angle), torch.cos(angle)
    extrinsics[..., :3, 3] = 0.2 * torch.randn(batch, views, 3, generator=generator)
    intrinsics = torch.tensor([[0.9, 0.0, 0.5], [0.0, 1.2, 0.5], [0.0, 0.0, 1.0]]).repeat(batch, views, 1, 1)
    return Gaussians(means, covariances, opacities, features), extrinsics, intrinsics, near, far


def _render_with_gradients(gaussians: Gaussians, cameras, size, backend: str, device: str, cotangents):
    """Outputs and the gradients of ``Σ cotangent · output`` w.r.t. the four Gaussian tensors, moved to CPU."""
    inputs = [t.to(device).requires_grad_() for t in (gaussians.means, gaussians.covariances, gaussians.opacities, gaussians.features)]
    out = render_features(Gaussians(*inputs), Cameras(*(c.to(device) for c in cameras), size), backend=backend)
    features_cotangent, alpha_cotangent, depth_cotangent = (c.to(device) for c in cotangents)
    loss = (out.features * features_cotangent).sum() + (out.alpha * alpha_cotangent).sum() + (out.depth * depth_cotangent).sum()
    gradients = torch.autograd.grad(loss, inputs)
    # gsplat reads the covariances' upper triangle: compare symmetrised gradients.
    gradients = [g.cpu() for g in gradients]
    gradients[1] = 0.5 * (gradients[1] + gradients[1].transpose(-1, -2))
    outputs = {name: getattr(out, name).detach().cpu() for name in ("features", "alpha", "depth")}
    return outputs, dict(zip(("means", "covariances", "opacities", "features"), gradients))


@pytest.mark.parametrize("channels", [3, 32, 384])
@pytest.mark.parametrize("batch, views, extremes", [(1, 1, False), (2, 3, False), (1, 3, True)], ids=["one-view", "batched", "extremes"])
def test_gsplat_outputs_and_gradients_match_the_torch_twin(batch, views, extremes, channels, record_max_error):
    gaussians, *cameras = _random_scene(batch, views, 3000, channels, seed=channels + views, extremes=extremes)
    size = (48, 64)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        alpha = render_features(gaussians, Cameras(*cameras, size), backend="torch").alpha
    cotangents = (
        torch.randn(batch, views, channels, *size, generator=generator),
        torch.randn(batch, views, 1, *size, generator=generator),
        # The depth's only where alpha is well above 0: the expected depth divides by alpha.
        torch.randn(batch, views, 1, *size, generator=generator) * (alpha > 0.5),
    )
    expected, expected_gradients = _render_with_gradients(gaussians, cameras, size, "torch", DEVICE, cotangents)
    actual, actual_gradients = _render_with_gradients(gaussians, cameras, size, BACKEND, DEVICE, cotangents)
    errors = {name: record_max_error(name, actual[name], expected[name])[1] for name in expected}
    errors.update(
        {f"grad {name}": record_max_error(f"grad {name}", actual_gradients[name], expected_gradients[name])[1] for name in expected_gradients}
    )
    too_large = {
        name: error
        for name, error in errors.items()
        if error > (GRADIENT_TOLERANCE if name.startswith("grad") else OUTPUT_TOLERANCE)
    }
    assert not too_large, f"relative max errors above tolerance: {too_large}"


@pytest.mark.parametrize("z, opacity, count", [(-2.0, 1.0, 1), (2.0, 0.0, 1), (2.0, 1.0, 0)], ids=["behind", "transparent", "empty"])
def test_gsplat_renders_nothing_visible_in_the_graph_like_the_twin(z, opacity, count):
    device = torch.device(DEVICE)
    means = torch.tensor([[0.0, 0.0, z]] * count, device=device).reshape(1, count, 3).requires_grad_()
    covariances = (0.01 * torch.eye(3, device=device)).expand(1, count, 3, 3).clone().requires_grad_()
    opacities = torch.full((1, count), opacity, device=device, requires_grad=True)
    features = torch.ones(1, count, 4, device=device, requires_grad=True)
    cameras = [torch.eye(4).expand(1, 1, 4, 4), torch.tensor([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]]).expand(1, 1, 3, 3)]
    cameras += [torch.full((1, 1), 0.1), torch.full((1, 1), 10.0)]
    out = render_features(
        Gaussians(means, covariances, opacities, features), Cameras(*[c.to(device) for c in cameras], (16, 24)), backend=BACKEND, background=0.5
    )
    assert out.features.requires_grad and out.alpha.requires_grad
    torch.testing.assert_close(out.features, torch.full_like(out.features, 0.5))
    (out.features.sum() + out.alpha.sum()).backward()
    for tensor in (means, covariances, opacities, features):
        assert tensor.grad is None or tensor.grad.abs().sum() == 0
