"""Parity of the MVSplat port with the original encoder (fixtures/mvsplat), and its loading rules."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from snd_hf.splatting import MVSplatLifter
from snd_hf.splatting.gaussians import Gaussians
from snd_hf.splatting.mvsplat import (
    MVSplatConfig,
    convert_checkpoint,
    load_checkpoint_state_dict,
)
from snd_hf.splatting.mvsplat.depth_predictor import (
    build_cost_volume,
    disparity_candidates,
)
from snd_hf.cameras import Cameras, quaternion_xyzw_to_matrix

# Fixture's suggested tolerance: max |port - reference| <= 2e-4 * max |reference| (CPU kernel noise ~7e-5).
RELATIVE_TOLERANCE = 2e-4
CASES = ("case0", "case1", "case2")
HEIGHT, WIDTH = 64, 96
CAMERA_FIELDS = ("extrinsics", "intrinsics", "near", "far")


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def mvsplat_dir(fixtures_dir):
    return fixtures_dir / "mvsplat"


@pytest.fixture(scope="module")
def reference(mvsplat_dir):
    return {**load_file(mvsplat_dir / "cases.safetensors"), **load_file(mvsplat_dir / "extra_cases.safetensors")}


@pytest.fixture(scope="module")
def intermediates(mvsplat_dir):
    return load_file(mvsplat_dir / "intermediates.safetensors")


@pytest.fixture(scope="module")
def lifter(mvsplat_dir):
    return MVSplatLifter.from_checkpoint(mvsplat_dir / "encoder_state_dict.pth")


def _inputs(reference, case, images=None):
    """The case's context images [B, 2, 3, H, W] (or ``images`` in their place) and cameras [B, 2]."""
    images = reference[f"{case}/context_image"] if images is None else images
    return images, Cameras(*(reference[f"{case}/{name}"] for name in CAMERA_FIELDS), tuple(images.shape[-2:]))


@pytest.fixture(scope="module")
def outputs(lifter, reference):
    with torch.no_grad():
        return {case: lifter.predict(*_inputs(reference, case)) for case in CASES}


@pytest.mark.parametrize("case", CASES)
def test_parity_with_original_encoder(outputs, reference, case):
    output = outputs[case]
    batch = reference[f"{case}/means"].shape[0]
    assert isinstance(output.gaussians, Gaussians)
    assert output.gaussians.num_gaussians == 2 * HEIGHT * WIDTH
    pairs = {
        "depths": (output.depths, reference[f"{case}/depths"].reshape(batch, 2, HEIGHT, WIDTH)),
        "opacities": (output.gaussians.opacities, reference[f"{case}/opacities"]),
        "means": (output.gaussians.means, reference[f"{case}/means"]),
        "covariances": (output.gaussians.covariances, reference[f"{case}/covariances"]),
        "scales": (output.camera_scales, reference[f"{case}/scales"]),
        "rotations": (output.camera_rotations, reference[f"{case}/rotations"]),
    }
    errors = {name: _relative_error(actual, expected) for name, (actual, expected) in pairs.items()}
    assert all(error <= RELATIVE_TOLERANCE for error in errors.values()), errors
    # Depths also elementwise (they span near..far).
    torch.testing.assert_close(pairs["depths"][0], pairs["depths"][1], rtol=RELATIVE_TOLERANCE, atol=0.0)


def test_forward_returns_the_gaussians_of_predict(lifter, reference, outputs, monkeypatch):
    images, cameras = _inputs(reference, "case0")
    monkeypatch.setattr(lifter, "predict", lambda *given: outputs["case0"] if given[0] is images and given[1] is cameras else None)
    gaussians = lifter(images, cameras)
    assert gaussians is outputs["case0"].gaussians
    assert gaussians.features is None


@pytest.mark.parametrize("case", ["case0", "case2"])
def test_backbone_matches_intermediates(lifter, reference, intermediates, case):
    with torch.no_grad():
        features, cnn_features = lifter.backbone(reference[f"{case}/context_image"])
    cnn_expected = intermediates[f"{case}/backbone_cnn_features"]
    features_expected = intermediates[f"{case}/backbone_trans_features"]
    assert _relative_error(cnn_features, cnn_expected) <= RELATIVE_TOLERANCE
    assert _relative_error(features, features_expected) <= RELATIVE_TOLERANCE


@pytest.mark.parametrize("case", CASES)
def test_cost_volume_matches_intermediates(reference, intermediates, case):
    # case1 shares case0's images, so its backbone features are case0's.
    source = "case0" if case == "case1" else case
    features = intermediates[f"{source}/backbone_trans_features"]
    batch, views = features.shape[:2]
    _, cameras = _inputs(reference, case)
    disparities = disparity_candidates(cameras.near, cameras.far, 128)
    cost = build_cost_volume(features, cameras.intrinsics, cameras.extrinsics, disparities)
    # The original's depth-predictor tensors are ordered (v b): [cost, features] per view.
    expected = intermediates[f"{case}/costvolume_in"][:, :128]
    expected = expected.reshape(views, batch, *expected.shape[1:]).transpose(0, 1)
    assert _relative_error(cost, expected) <= RELATIVE_TOLERANCE


def test_disparity_candidates_run_far_to_near():
    candidates = disparity_candidates(torch.tensor([2.0]), torch.tensor([10.0]), 5)
    torch.testing.assert_close(candidates, torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]]))


def test_quaternion_matrix_is_a_rotation():
    quaternions = torch.randn(16, 4)
    rotations = quaternion_xyzw_to_matrix(quaternions)
    identity = torch.eye(3).expand(16, 3, 3)
    torch.testing.assert_close(rotations @ rotations.transpose(-1, -2), identity, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(16), atol=1e-5, rtol=0)
    # 90° about z: x → y.
    quarter = torch.tensor([0.0, 0.0, 2**-0.5, 2**-0.5])
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(quaternion_xyzw_to_matrix(quarter), expected, atol=1e-6, rtol=0)


def test_state_dict_keys_match_the_checkpoint_layout(mvsplat_dir):
    listed = json.loads((mvsplat_dir / "keys.json").read_text())
    lifter = MVSplatLifter()
    ours = {key: list(value.shape) for key, value in lifter.state_dict().items()}
    assert ours == {entry["name"]: entry["shape"] for entry in listed["keys"]}
    assert sum(p.numel() for p in lifter.parameters()) == listed["num_parameters"] == 11_955_734


def test_from_checkpoint_is_frozen(lifter):
    assert not lifter.training
    assert not any(p.requires_grad for p in lifter.parameters())


def test_convert_checkpoint_strips_prefix_and_ignores_other_modules():
    weight = torch.zeros(1)
    converted = convert_checkpoint({"encoder.backbone.x": weight, "decoder.background": weight, "step": weight})
    assert list(converted) == ["backbone.x"]
    assert list(convert_checkpoint({"backbone.x": weight})) == ["backbone.x"]


def test_strict_load_names_every_bad_key(mvsplat_dir):
    state = convert_checkpoint(load_checkpoint_state_dict(mvsplat_dir / "encoder_state_dict.pth"))
    state.pop("depth_predictor.to_disparity.2.bias")
    state["depth_predictor.extra.weight"] = torch.zeros(1)
    state["backbone.backbone.conv2.bias"] = torch.zeros(64)
    with pytest.raises(ValueError) as error:
        MVSplatLifter().load_state_dict(state)
    message = str(error.value)
    assert "depth_predictor.to_disparity.2.bias" in message
    assert "depth_predictor.extra.weight" in message
    assert "backbone.backbone.conv2.bias: expected [128], got [64]" in message


def test_safetensors_checkpoint_round_trip(mvsplat_dir, lifter, tmp_path):
    path = tmp_path / "mvsplat.safetensors"
    save_file({f"encoder.{key}": value.contiguous() for key, value in lifter.state_dict().items()}, path)
    reloaded = MVSplatLifter.from_checkpoint(path)
    for key, value in lifter.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_non_tensor_checkpoint_gets_a_clear_error(tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": MVSplatConfig()}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        MVSplatLifter.from_checkpoint(path)


def test_context_validation(lifter, reference):
    images, cameras = _inputs(reference, "case0")
    batch = images.shape[0]
    one_view = Cameras(*(getattr(cameras, name)[:, :1] for name in CAMERA_FIELDS), cameras.image_size)
    with pytest.raises(ValueError, match="at least 2 context views"):
        lifter(images[:, :1], one_view)
    with pytest.raises(ValueError, match=rf"`cameras` must have shape \[{batch}, 2\] .*got \[{batch}, 1\]"):
        lifter(images, one_view)
    with pytest.raises(ValueError, match=r"`cameras.image_size` must be the images' \(H, W\) = \(64, 96\), got \(32, 48\)"):
        lifter(images, replace(cameras, image_size=(32, 48)))
    with pytest.raises(ValueError, match=r"`images` must have shape \[B, V, 3, H, W\], got \[2, 3, 64, 96\]"):
        lifter(images[0], cameras)
    with pytest.raises(TypeError, match="`cameras` must be a Cameras .*got dict"):
        lifter(images, {"extrinsics": cameras.extrinsics})


def test_any_image_size_gives_one_gaussian_per_input_pixel(lifter, reference):
    """A size off the encoder's multiples of 16 (58 rounds up to 64, 101 down to 96): Gaussians on
    the input's own pixel grid and rays."""
    original, cameras = _inputs(reference, "case1")
    size = height, width = (58, 101)
    images = F.interpolate(original.flatten(0, 1), size=size, mode="bilinear", antialias=True)
    images = images.unflatten(0, original.shape[:2])
    with torch.no_grad():
        output = lifter.predict(*_inputs(reference, "case1", images))
    batch, views = images.shape[:2]
    assert output.gaussians.num_gaussians == views * height * width
    assert output.depths.shape == (batch, views, height, width)

    # Ordered b (v h w): Gaussian (v, i, j) projects into pixel (i, j) of view v (its sub-pixel offset
    # stays inside the pixel), at its predicted distance along the ray.
    means = output.gaussians.means.reshape(batch, views, height, width, 3)
    world_to_camera = torch.linalg.inv(cameras.extrinsics)[:, :, None, None]
    camera = (world_to_camera[..., :3, :3] @ means[..., None]).squeeze(-1) + world_to_camera[..., :3, 3]
    projected = (cameras.intrinsics[:, :, None, None] @ (camera / camera[..., 2:])[..., None]).squeeze(-1)
    pixels = projected[..., :2] * torch.tensor([width, height])
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    centres = torch.stack([columns, rows], dim=-1) + 0.5
    assert (pixels - centres).abs().max() <= 0.5 + 1e-3
    torch.testing.assert_close(camera.norm(dim=-1), output.depths, rtol=1e-4, atol=1e-4)

    # Depths come from the encoder run at the nearest multiples of 16, each pixel taking the value
    # under its centre: the same as running at that size and resampling (nearest) by hand.
    encoder_size = lifter.config.encoder_size(height, width)
    assert encoder_size == (64, 96)
    resized = F.interpolate(images.flatten(0, 1), size=encoder_size, mode="bilinear", antialias=True)
    with torch.no_grad():
        direct = lifter.predict(*_inputs(reference, "case1", resized.unflatten(0, (batch, views))))
    expected = F.interpolate(direct.depths, size=size, mode="nearest-exact")
    torch.testing.assert_close(output.depths, expected, rtol=0, atol=0)


def test_encoder_size_rounds_to_the_nearest_multiple():
    config = MVSplatConfig()
    assert config.size_multiple == 16
    assert config.encoder_size(576, 880) == (576, 880)  # SnD's size: untouched
    assert config.encoder_size(224, 308) == (224, 304)
    assert config.encoder_size(10, 25) == (16, 32)
