"""The pure-torch feature renderer against analytic cases, round trips and gradient checks."""

from __future__ import annotations

import pytest
import torch

from snd_hf.cameras import Cameras, unproject_depth
from snd_hf.splatting.gaussians import Gaussians
from snd_hf.splatting.render import render_features

HEIGHT, WIDTH, FOCAL = 16, 24, 20.0


def _camera(batch: int = 1, views: int = 1, dtype=torch.float32):
    """Identity pose, focal 20 px, principal point at the image centre (normalised intrinsics)."""
    intrinsics = torch.tensor(
        [[FOCAL / WIDTH, 0.0, 0.5], [0.0, FOCAL / HEIGHT, 0.5], [0.0, 0.0, 1.0]], dtype=dtype
    ).expand(batch, views, 3, 3)
    extrinsics = torch.eye(4, dtype=dtype).expand(batch, views, 4, 4)
    near = torch.full((batch, views), 0.1, dtype=dtype)
    far = torch.full((batch, views), 10.0, dtype=dtype)
    return extrinsics, intrinsics, near, far


def _render(gaussians: Gaussians, **kwargs):
    return render_features(gaussians, Cameras(*_camera(dtype=gaussians.means.dtype), (HEIGHT, WIDTH)), backend="torch", **kwargs)


def _pixel_grid(dtype=torch.float64):
    rows, columns = torch.meshgrid(torch.arange(HEIGHT, dtype=dtype), torch.arange(WIDTH, dtype=dtype), indexing="ij")
    return columns + 0.5, rows + 0.5


def _projected(mean, covariance):
    """Centre and EWA covariance (+0.3 px² low-pass) of a camera-frame Gaussian, in pixels."""
    x, y, z = mean.double()
    jacobian = torch.tensor([[FOCAL / z, 0.0, -FOCAL * x / z**2], [0.0, FOCAL / z, -FOCAL * y / z**2]], dtype=torch.float64)
    covariance2d = jacobian @ covariance.double() @ jacobian.T + 0.3 * torch.eye(2, dtype=torch.float64)
    return (FOCAL * x / z + WIDTH / 2, FOCAL * y / z + HEIGHT / 2), covariance2d


def _analytic_alpha(centre, covariance2d, opacity):
    """gsplat's per-pixel alpha of one splat: min(0.999, o exp(-½ dᵀ Σ⁻¹ d)), 0 below 1/255."""
    x, y = _pixel_grid()
    delta = torch.stack([x - centre[0], y - centre[1]], dim=-1)
    mahalanobis = torch.einsum("hwi,ij,hwj->hw", delta, torch.linalg.inv(covariance2d), delta)
    alpha = (opacity * torch.exp(-0.5 * mahalanobis)).clamp_max(0.999)
    return torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))


def test_single_gaussian_footprint_is_the_analytic_projected_gaussian():
    covariance = torch.tensor([[0.02, 0.005, 0.0], [0.005, 0.01, 0.0], [0.0, 0.0, 0.03]])
    mean = torch.tensor([0.3, -0.2, 2.0])
    gaussians = Gaussians(mean[None, None], covariance[None, None], torch.tensor([[0.8]]), torch.tensor([[[1.0, -2.0]]]))
    out = _render(gaussians)
    # A centre at (x, y, z) projects to (f x / z + W/2, f y / z + H/2); the Jacobian's z column
    # couples the depth variance: Σ₂ = J Σ Jᵀ + 0.3 I.
    expected = _analytic_alpha(*_projected(mean, covariance), 0.8)
    torch.testing.assert_close(out.alpha[0, 0, 0].double(), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.features[0, 0, 1].double(), -2.0 * expected, atol=1e-6, rtol=1e-5)
    covered = expected > 0
    assert covered.sum() > 20
    torch.testing.assert_close(out.depth[0, 0, 0][covered], torch.full((int(covered.sum()),), 2.0))


def test_overlapping_gaussians_composite_front_to_back_whatever_their_order():
    means = torch.tensor([[0.0, 0.0, 3.0], [0.05, 0.0, 2.0]])  # the second is in front
    covariances = torch.eye(3).expand(2, 3, 3) * 0.02
    opacities = torch.tensor([0.9, 0.6])
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = _render(Gaussians(means[None], covariances[None], opacities[None], features[None]))
    swapped = _render(Gaussians(means.flip(0)[None], covariances[None], opacities.flip(0)[None], features.flip(0)[None]))
    torch.testing.assert_close(out.features, swapped.features)

    alphas = []
    for mean, covariance, opacity in zip(means, covariances, opacities.double()):
        alphas.append(_analytic_alpha(*_projected(mean, covariance), opacity))
    back, front = alphas
    torch.testing.assert_close(out.features[0, 0, 1].double(), front, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.features[0, 0, 0].double(), back * (1 - front), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.alpha[0, 0, 0].double(), front + back * (1 - front), atol=1e-6, rtol=1e-5)
    expected_depth = (2.0 * front + 3.0 * back * (1 - front)) / (front + back * (1 - front)).clamp_min(1e-10)
    covered = out.alpha[0, 0, 0] > 0
    torch.testing.assert_close(out.depth[0, 0, 0][covered].double(), expected_depth[covered], atol=1e-5, rtol=1e-5)


def test_a_pixel_stops_before_its_transmittance_drops_to_1e_minus_4():
    # Three splats centred on pixel (8, 12), 0.2 px wide, at depths 1, 2, 3 (no low-pass).
    depths = torch.tensor([1.0, 2.0, 3.0])
    means = torch.stack([0.5 * depths / FOCAL, 0.5 * depths / FOCAL, depths], dim=-1)
    covariances = torch.eye(3) * (0.2 * depths / FOCAL)[:, None, None] ** 2
    features = torch.tensor([[1.0], [10.0], [100.0]])
    centre = (HEIGHT // 2, WIDTH // 2)

    # Opacity 0.9: T goes 0.1, 0.01, 0.001 (> 1e-4), so all three count: 0.9 + 0.09·10 + 0.009·100.
    out = _render(Gaussians(means[None], covariances[None], torch.full((1, 3), 0.9), features[None]), eps2d=0.0)
    assert out.features[0, 0, 0][centre].item() == pytest.approx(2.7, rel=1e-5)
    assert out.alpha[0, 0, 0][centre].item() == pytest.approx(0.999, rel=1e-5)
    # Opacity 1 (alpha capped at 0.999): after the first T = 1e-3; the second would bring it to
    # 1e-6, so the pixel stops there and only the first splat counts (gsplat's exclusive stop).
    out = _render(Gaussians(means[None], covariances[None], torch.ones(1, 3), features[None]), eps2d=0.0)
    assert out.features[0, 0, 0][centre].item() == pytest.approx(0.999, rel=1e-5)
    assert out.alpha[0, 0, 0][centre].item() == pytest.approx(0.999, rel=1e-5)
    assert out.depth[0, 0, 0][centre].item() == pytest.approx(1.0, rel=1e-5)


def test_rendering_is_linear_in_the_features():
    generator = torch.Generator().manual_seed(1)
    count = 40
    means = torch.cat([torch.rand(count, 2, generator=generator) - 0.5, 1.5 + torch.rand(count, 1, generator=generator)], -1)
    covariances = torch.diag_embed(0.005 + 0.01 * torch.rand(count, 3, generator=generator))
    opacities = torch.rand(count, generator=generator)
    first, second = torch.randn(2, 1, count, 5, generator=generator)
    base = Gaussians(means[None], covariances[None], opacities[None])
    combined = _render(base.with_features(2.0 * first - 0.5 * second)).features
    separate = 2.0 * _render(base.with_features(first)).features - 0.5 * _render(base.with_features(second)).features
    torch.testing.assert_close(combined, separate, atol=1e-5, rtol=1e-5)


def test_bands_of_rows_do_not_change_the_result():
    generator = torch.Generator().manual_seed(2)
    count = 60
    means = torch.cat([torch.rand(count, 2, generator=generator) - 0.5, 1.5 + torch.rand(count, 1, generator=generator)], -1)
    covariances = torch.diag_embed(0.002 + 0.02 * torch.rand(count, 3, generator=generator))
    gaussians = Gaussians(means[None], covariances[None], torch.rand(1, count, generator=generator), torch.randn(1, count, 7, generator=generator))
    reference = _render(gaussians)
    small = _render(gaussians, max_pairs=60)  # many bands, some rows alone over budget
    for name in ("features", "alpha", "depth"):
        torch.testing.assert_close(getattr(small, name), getattr(reference, name), atol=1e-6, rtol=1e-5)


def test_unprojected_pixels_render_back_into_their_own_view():
    """Gaussians lifted from view A with A's depth reproduce A's features where alpha ≈ 1."""
    extrinsics, intrinsics, near, far = _camera()
    rows, columns = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
    depth = (2.0 + 0.03 * columns + 0.02 * rows).float()[None, None]  # a tilted plane [1, 1, H, W]
    means = unproject_depth(depth, extrinsics, intrinsics).reshape(1, -1, 3)
    # A 0.2 px footprint and no low-pass: neighbours fall below 1/255 at the pixel centres.
    sigma = 0.2 * depth.flatten() / FOCAL
    covariances = torch.diag_embed(sigma[:, None].expand(-1, 3) ** 2)[None]
    features = torch.randn(1, HEIGHT * WIDTH, 6)
    gaussians = Gaussians(means, covariances, torch.ones(1, HEIGHT * WIDTH), features)
    out = render_features(gaussians, Cameras(extrinsics, intrinsics, near, far, (HEIGHT, WIDTH)), backend="torch", eps2d=0.0)
    assert (out.alpha > 0.99).all()
    expected = features[0].T.reshape(6, HEIGHT, WIDTH)
    torch.testing.assert_close(out.features[0, 0] / out.alpha[0, 0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.depth[0, 0, 0], depth[0, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("z", [-2.0, 0.0, 0.05, 12.0])
def test_gaussians_behind_the_camera_or_outside_near_far_contribute_nothing(z):
    gaussians = Gaussians(
        torch.tensor([[[0.0, 0.0, z]]]), (torch.eye(3) * 0.5)[None, None], torch.ones(1, 1), torch.ones(1, 1, 3)
    )
    out = _render(gaussians)
    assert out.alpha.abs().max() == 0 and out.features.abs().max() == 0 and out.depth.abs().max() == 0


@pytest.mark.parametrize(
    "covariance",
    [torch.zeros(3, 3), torch.diag(torch.tensor([0.01, 0.0, 0.0])), -0.01 * torch.eye(3), torch.diag(torch.tensor([1e-12, 1e-12, 1e-12]))],
    ids=["zero", "rank-1", "negative", "tiny"],
)
def test_degenerate_covariances_give_finite_values_and_gradients(covariance):
    means = torch.tensor([[[0.0, 0.0, 2.0], [0.1, 0.1, 3.0]]], requires_grad=True)
    covariances = torch.stack([covariance, torch.eye(3) * 0.01])[None].requires_grad_()
    opacities = torch.tensor([[0.9, 0.5]], requires_grad=True)
    features = torch.randn(1, 2, 4, requires_grad=True)
    out = _render(Gaussians(means, covariances, opacities, features))
    assert all(torch.isfinite(t).all() for t in (out.features, out.alpha, out.depth))
    (out.features.sum() + out.alpha.sum() + out.depth.sum()).backward()
    for tensor in (means, covariances, opacities, features):
        assert torch.isfinite(tensor.grad).all()


def test_zero_opacity_and_empty_scenes_render_the_background():
    zero = Gaussians(torch.tensor([[[0.0, 0.0, 2.0]]]), (torch.eye(3) * 0.01)[None, None], torch.zeros(1, 1), torch.ones(1, 1, 2))
    empty = Gaussians(torch.zeros(1, 0, 3), torch.zeros(1, 0, 3, 3), torch.zeros(1, 0), torch.zeros(1, 0, 2))
    for gaussians in (zero, empty):
        out = _render(gaussians, background=torch.tensor([0.25, -1.0]))
        assert out.alpha.abs().max() == 0 and out.depth.abs().max() == 0
        torch.testing.assert_close(out.features[0, 0, :, 3, 4], torch.tensor([0.25, -1.0]))


_NOTHING_VISIBLE = {
    "behind the camera": ([0.0, 0.0, -2.0], 0.5, 1.0),
    "beyond far": ([0.0, 0.0, 12.0], 0.5, 1.0),
    "off screen": ([50.0, 0.0, 2.0], 0.01, 1.0),
    "zero opacity": ([0.0, 0.0, 2.0], 0.01, 0.0),
    "below 1/255": ([0.0, 0.0, 2.0], 0.01, 0.003),
    "no Gaussians": (None, 0.0, 0.0),
}


@pytest.mark.parametrize("case", list(_NOTHING_VISIBLE), ids=list(_NOTHING_VISIBLE))
def test_nothing_visible_stays_differentiable_with_zero_gradients(case):
    mean, variance, opacity = _NOTHING_VISIBLE[case]
    count = 0 if mean is None else 1
    means = torch.tensor([mean] if count else [], dtype=torch.float32).reshape(1, count, 3).requires_grad_()
    covariances = (torch.eye(3) * variance).expand(1, count, 3, 3).clone().requires_grad_()
    opacities = torch.full((1, count), opacity, requires_grad=True)
    features = torch.ones(1, count, 2, requires_grad=True)
    out = _render(Gaussians(means, covariances, opacities, features), background=torch.tensor([0.25, -1.0]))
    assert out.features.requires_grad and out.alpha.requires_grad and out.depth.requires_grad
    torch.testing.assert_close(out.features, torch.tensor([0.25, -1.0]).view(1, 1, 2, 1, 1).expand_as(out.features))
    assert out.alpha.abs().max() == 0 and out.depth.abs().max() == 0
    (out.features.square().sum() + out.alpha.sum() + out.depth.sum()).backward()
    for tensor in (means, covariances, opacities, features):
        assert tensor.grad is not None and tensor.grad.shape == tensor.shape
        assert tensor.grad.abs().sum() == 0


def test_only_the_means_requiring_grad_still_backpropagate_through_an_empty_render():
    means = torch.tensor([[[0.0, 0.0, -1.0]]], requires_grad=True)
    out = _render(Gaussians(means, (torch.eye(3) * 0.1)[None, None], torch.ones(1, 1), torch.ones(1, 1, 3)))
    out.features.sum().backward()
    assert torch.equal(means.grad, torch.zeros_like(means))


def test_background_fills_the_uncovered_part_of_each_pixel():
    gaussians = Gaussians(torch.tensor([[[0.0, 0.0, 2.0]]]), (torch.eye(3) * 0.01)[None, None], torch.tensor([[0.7]]), torch.ones(1, 1, 1))
    plain, filled = _render(gaussians), _render(gaussians, background=3.0)
    torch.testing.assert_close(filled.features, plain.features + 3.0 * (1 - plain.alpha))


def test_batches_and_views_render_independently():
    generator = torch.Generator().manual_seed(3)
    count = 30
    means = torch.cat([torch.rand(2, count, 2, generator=generator) - 0.5, 2 + torch.rand(2, count, 1, generator=generator)], -1)
    covariances = torch.diag_embed(0.005 + 0.01 * torch.rand(2, count, 3, generator=generator))
    gaussians = Gaussians(means, covariances, torch.rand(2, count, generator=generator), torch.randn(2, count, 3, generator=generator))
    extrinsics, intrinsics, near, far = _camera(batch=2, views=2)
    extrinsics = extrinsics.clone()
    extrinsics[:, 1, 0, 3] = 0.2  # the second view is shifted right
    out = render_features(gaussians, Cameras(extrinsics, intrinsics, near, far, (HEIGHT, WIDTH)), backend="torch")
    assert out.features.shape == (2, 2, 3, HEIGHT, WIDTH)
    for b in range(2):
        single = Gaussians(means[b : b + 1], covariances[b : b + 1], gaussians.opacities[b : b + 1], gaussians.features[b : b + 1])
        for v in range(2):
            view = render_features(
                single,
                Cameras(extrinsics[b : b + 1, v : v + 1], intrinsics[b : b + 1, v : v + 1], near[:1, :1], far[:1, :1], (HEIGHT, WIDTH)),
                backend="torch",
            )
            torch.testing.assert_close(out.features[b, v], view.features[0, 0])
    assert not torch.allclose(out.features[0, 0], out.features[0, 1])


def test_gradcheck_features_means_covariances_opacities():
    dtype = torch.float64
    means = torch.tensor([[[0.02, -0.03, 1.0], [-0.04, 0.03, 1.3], [0.05, 0.05, 1.6]]], dtype=dtype, requires_grad=True)
    covariances = (torch.eye(3, dtype=dtype) * 0.0006).expand(1, 3, 3, 3).clone().requires_grad_()
    opacities = torch.tensor([[0.6, 0.5, 0.7]], dtype=dtype, requires_grad=True)
    features = torch.randn(1, 3, 2, dtype=dtype, requires_grad=True)
    extrinsics, intrinsics, near, far = _camera(dtype=dtype)
    intrinsics = intrinsics.clone()
    intrinsics[..., 0, 0], intrinsics[..., 1, 1] = 8.0 / 6, 8.0 / 5  # 8 px focal on a 5x6 image

    def render(means, covariances, opacities, features):
        out = render_features(
            Gaussians(means, covariances, opacities, features), Cameras(extrinsics, intrinsics, near, far, (5, 6)), backend="torch"
        )
        return out.features, out.alpha, out.depth

    assert torch.autograd.gradcheck(render, (means, covariances, opacities, features), eps=1e-6, atol=1e-5, fast_mode=True)


def test_gradients_are_bit_identical_at_any_thread_count():
    """Fitting and training must be reproducible from a seed: the backward pass may not depend on how
    threads split the scatter of per-pair gradients back onto the Gaussians."""
    generator = torch.Generator().manual_seed(0)
    count = 2000  # enough pairs for torch to split the work between threads
    means = torch.randn(1, count, 3, generator=generator) * torch.tensor([0.3, 0.2, 0.1]) + torch.tensor([0.0, 0.0, 2.0])
    factors = torch.randn(1, count, 3, 3, generator=generator) * 0.03
    covariances = factors @ factors.transpose(-1, -2) + 1e-3 * torch.eye(3)
    opacities = torch.rand(1, count, generator=generator)
    features = torch.randn(1, count, 8, generator=generator)

    def gradients(threads: int) -> list[torch.Tensor]:
        leaves = [tensor.clone().requires_grad_() for tensor in (means, covariances, opacities, features)]
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = _render(Gaussians(*leaves))
            (out.features.square().sum() + out.alpha.sum() + out.depth.sum()).backward()
        finally:
            torch.set_num_threads(previous)
        return [leaf.grad for leaf in leaves]

    reference = gradients(1)
    for threads in (2, 4):
        assert all(torch.equal(a, b) for a, b in zip(reference, gradients(threads))), f"{threads} threads"


def test_invalid_arguments_raise_errors_naming_them():
    gaussians = Gaussians(torch.zeros(1, 1, 3), torch.zeros(1, 1, 3, 3), torch.zeros(1, 1), torch.zeros(1, 1, 2))
    cameras = _camera()
    with pytest.raises(ValueError, match="gsplat"):
        render_features(gaussians, Cameras(*cameras, (4, 4)), backend="gsplat")
    with pytest.raises(ValueError, match="backend"):
        render_features(gaussians, Cameras(*cameras, (4, 4)), backend="opengl")
    with pytest.raises(ValueError, match="features"):
        render_features(Gaussians(gaussians.means, gaussians.covariances, gaussians.opacities), Cameras(*cameras, (4, 4)))
    with pytest.raises(ValueError, match="intrinsics"):
        render_features(gaussians, Cameras(cameras[0], cameras[1][..., :2, :], *cameras[2:], (4, 4)))
    with pytest.raises(ValueError, match="image_size"):
        render_features(gaussians, Cameras(*cameras, (4, 0)))
    with pytest.raises(ValueError, match="background"):
        render_features(gaussians, Cameras(*cameras, (4, 4)), background=torch.zeros(3))
