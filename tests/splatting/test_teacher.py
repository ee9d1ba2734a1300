"""The teacher step end to end on CPU with a tiny SnDModel and the depth lifter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from snd_hf import SnDConfig, SnDModel
from snd_hf.splatting.lifters import DepthLifter
from snd_hf.splatting.teacher import SplatTeacher, TeacherTargets

HEIGHT, WIDTH = 64, 96


def patch_features(model: SnDModel, images: torch.Tensor) -> torch.Tensor:
    """[B, V, 3, H, W] images -> [B, V, C, h, w] features with the model's one images-to-features path."""
    return model.image_features(images.flatten(0, 1)).feature_map.unflatten(0, images.shape[:2])


def _view(depth: torch.Tensor, mask: torch.Tensor, yaw: float = 0.0) -> dict[str, torch.Tensor]:
    """One view per batch element looking down +z at the scene, optionally turned about y."""
    batch = depth.shape[0]
    pose = torch.eye(4)
    pose[0, 0], pose[0, 2] = torch.cos(torch.tensor(yaw)), torch.sin(torch.tensor(yaw))
    pose[2, 0], pose[2, 2] = -torch.sin(torch.tensor(yaw)), torch.cos(torch.tensor(yaw))
    intrinsics = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.5, 0.5], [0.0, 0.0, 1.0]])  # 96 px focal
    return {
        "image": torch.rand(batch, 1, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0)),
        "extrinsics": pose.expand(batch, 1, 4, 4),
        "intrinsics": intrinsics.expand(batch, 1, 3, 3),
        "near": torch.full((batch, 1), 0.5),
        "far": torch.full((batch, 1), 20.0),
        "mask": mask,
        "depth": depth,
    }


def _scene(batch: int = 1, yaw: float = 0.0, mask: torch.Tensor | None = None) -> dict:
    rows, columns = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
    depth = (3.0 + 0.01 * columns + 0.005 * rows).float().expand(batch, 1, HEIGHT, WIDTH)
    if mask is None:
        mask = torch.zeros(batch, 1, HEIGHT, WIDTH, dtype=torch.long)
    return {"context": _view(depth, mask), "target": _view(depth, mask, yaw), "scene": ["plane"] * batch}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    config = SnDConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56)
    return SnDModel(config).eval()


def test_patch_features_resize_to_the_lower_multiple_of_14_and_normalise(tiny_model):
    images = torch.rand(2, 3, 3, HEIGHT, WIDTH)
    features = patch_features(tiny_model, images)
    assert features.shape == (2, 3, 32, HEIGHT // 14, WIDTH // 14)
    resized = F.interpolate(images.flatten(0, 1), size=(56, 84), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = tiny_model(pixel_values=(resized - mean) / std).feature_map
    torch.testing.assert_close(features.detach().flatten(0, 1), expected)


def test_teacher_step_reproduces_the_context_features_in_the_same_view(tiny_model):
    batch = _scene()
    with torch.no_grad():
        context_features = patch_features(tiny_model, batch["context"]["image"])  # [1, 1, 32, 4, 6]
        teacher = SplatTeacher(DepthLifter(scale=0.5), blending=1.0, backend="torch")
        targets = teacher(context_features, batch)
    assert isinstance(targets, TeacherTargets)
    assert targets.features.shape == (1, 1, 32, HEIGHT // 14, WIDTH // 14)
    assert targets.alpha.shape == (1, 1, 1, HEIGHT, WIDTH)
    assert targets.coverage.all()
    # Identical cameras: the render is the upsampled map (one segment: plain bilinear), area-pooled.
    upsampled = F.interpolate(context_features.flatten(0, 1), size=(HEIGHT, WIDTH), mode="bilinear", align_corners=True)
    expected = F.interpolate(upsampled, size=(HEIGHT // 14, WIDTH // 14), mode="area").unflatten(0, (1, 1))
    # Splats ~0.7 px wide (with the 0.3 px² low-pass) and nearer neighbours drawn first blur the
    # render by about a pixel, a few percent of these 14-px-smooth maps.
    assert (targets.features - expected).abs().max() < 0.08 * expected.abs().max()
    assert F.cosine_similarity(targets.features, expected, dim=2).min() > 0.99


def test_uncovered_tokens_are_flagged_not_zero_filled_into_the_loss(tiny_model):
    batch = _scene(yaw=0.35)  # the target turns right: its right part sees nothing
    context_features = torch.randn(1, 1, 32, 4, 6)
    targets = SplatTeacher(DepthLifter(), blending=1.0, backend="torch")(context_features, batch)
    coverage = targets.coverage[0, 0]
    assert coverage[:, 0].all() and not coverage[:, -1].any()
    token_alpha = F.interpolate(targets.alpha[0], size=coverage.shape, mode="area")[0, 0]
    assert torch.equal(coverage, token_alpha >= 0.5)


def test_full_blending_gives_each_token_inside_a_segment_its_segment_mean(tiny_model):
    mask = torch.zeros(1, 1, HEIGHT, WIDTH, dtype=torch.long)
    mask[..., WIDTH // 2 :] = 7  # two segments: left and right halves (token columns 0-2 and 3-5 at 14 px)
    batch = _scene(mask=mask)
    context_features = torch.randn(1, 1, 32, 4, 6)
    teacher = SplatTeacher(DepthLifter(), blending=0.0, backend="torch")
    targets = teacher(context_features, batch)
    plain = SplatTeacher(DepthLifter(), blending=1.0, backend="torch")(context_features, batch)
    left, right = targets.features[0, 0, :, :, :3], targets.features[0, 0, :, :, 4:]
    torch.testing.assert_close(left, left[:, :1, :1].expand_as(left), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right, right[:, :1, :1].expand_as(right), atol=1e-5, rtol=1e-5)
    # The two segments keep different means, and blending leaves coverage alone.
    assert not torch.allclose(left[:, 0, 0], right[:, 0, 0])
    assert torch.equal(targets.coverage, plain.coverage)
    # Each segment's mean is the alpha-weighted mean of the unblended render (covered everywhere
    # here), so the token average over a segment is preserved.
    torch.testing.assert_close(left[:, 0, 0], plain.features[0, 0, :, :, :3].mean((1, 2)), atol=0.05, rtol=0)


def test_bilinear_resampling_and_plain_upsampling_options_run(tiny_model):
    batch = _scene()
    context_features = torch.randn(1, 1, 32, 4, 6)
    area = SplatTeacher(DepthLifter(), backend="torch")(context_features, batch)
    original = SplatTeacher(DepthLifter(), resample="bilinear", mask_aware=False, weighted_blending=False, backend="torch")(
        context_features, batch
    )
    assert original.features.shape == area.features.shape
    assert not torch.allclose(original.features, area.features)


def test_invalid_teacher_arguments_raise_errors_naming_them():
    with pytest.raises(TypeError, match="lifter"):
        SplatTeacher(torch.nn.Identity())
    with pytest.raises(ValueError, match="resample"):
        SplatTeacher(DepthLifter(), resample="nearest")
    with pytest.raises(ValueError, match="blending"):
        SplatTeacher(DepthLifter(), blending=2.0)
    with pytest.raises(ValueError, match="context_features"):
        SplatTeacher(DepthLifter(), backend="torch")(torch.zeros(1, 2, 8, 4, 6), _scene())


def test_uint8_masks_give_the_int64_targets(tiny_model):
    mask = torch.zeros(1, 1, HEIGHT, WIDTH, dtype=torch.long)
    mask[..., WIDTH // 2 :] = 7
    context_features = torch.randn(1, 1, 32, 4, 6, generator=torch.Generator().manual_seed(0))
    teacher = SplatTeacher(DepthLifter(), blending=0.5, backend="torch")
    expected = teacher(context_features, _scene(mask=mask))
    small = _scene(mask=mask.to(torch.uint8))
    assert small["target"]["mask"].dtype == torch.uint8
    targets = teacher(context_features, small)
    torch.testing.assert_close(targets.features, expected.features, atol=0, rtol=0)
    assert torch.equal(targets.coverage, expected.coverage)
