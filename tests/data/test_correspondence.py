import math

import pytest
import torch

from snd_hf.data.correspondence import correspondences, relative_rotation_deg

# A 40x60 camera with fx = fy = 50 px and the principal point at the centre.
K = torch.tensor([[50.0 / 60, 0.0, 0.5], [0.0, 50.0 / 40, 0.5], [0.0, 0.0, 1.0]])


def _pose(yaw_deg: float = 0.0, translation=(0.0, 0.0, 0.0)) -> torch.Tensor:
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    pose = torch.eye(4)
    pose[:3, :3] = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    pose[:3, 3] = torch.tensor(translation)
    return pose


def test_translation_in_front_of_a_plane_shifts_pixels_analytically():
    depth = torch.full((40, 60), 2.0)
    pairs = correspondences(depth, depth, _pose(), _pose(translation=(0.2, 0.0, 0.0)), K, K, stride=2)
    assert pairs["xy_a"].shape == (600, 2)
    expected = pairs["xy_a"] - torch.tensor([50.0 * 0.2 / 2.0, 0.0])  # fx * tx / z = 5 px
    torch.testing.assert_close(pairs["xy_b"], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(pairs["depth_b"], torch.full((600,), 2.0))
    assert torch.equal(pairs["valid"], pairs["xy_b"][:, 0] >= 0)  # only the left strip leaves the image
    assert (~pairs["valid"]).sum() == 3 * 20  # columns 0, 2, 4 at stride 2, 20 rows


def test_occluded_and_invalid_pixels_are_rejected():
    depth_a = torch.full((40, 60), 2.0)
    depth_a[:, :10] = 0.0  # invalid depth: not sampled at all
    depth_b = torch.full((40, 60), 2.0)
    depth_b[10:20, 20:30] = 1.0  # an occluder in B
    depth_b[30:, :] = 0.0  # no depth in B: cannot be verified
    pairs = correspondences(depth_a, depth_b, _pose(), _pose(), K, K)
    assert pairs["xy_a"].shape[0] == 40 * 50
    rows, cols = (pairs["xy_a"][:, 1] - 0.5).long(), (pairs["xy_a"][:, 0] - 0.5).long()
    occluded = (rows >= 10) & (rows < 20) & (cols >= 20) & (cols < 30)
    assert torch.equal(pairs["valid"], ~occluded & (rows < 30))
    assert torch.equal(pairs["pixel_b"], torch.stack([rows, cols], -1))


def test_depth_tolerance_is_relative():
    depth_a = torch.full((4, 6), 10.0)
    depth_b = torch.full((4, 6), 10.4)
    assert correspondences(depth_a, depth_b, _pose(), _pose(), K, K, depth_tolerance=0.05)["valid"].all()
    assert not correspondences(depth_a, depth_b, _pose(), _pose(), K, K, depth_tolerance=0.03)["valid"].any()


def test_relative_rotation_degrees():
    assert relative_rotation_deg(_pose(10.0), _pose(40.0)).item() == pytest.approx(30.0, abs=1e-4)
    assert relative_rotation_deg(_pose(), _pose(180.0)).item() == pytest.approx(180.0, abs=1e-4)
    tiny = relative_rotation_deg(_pose().double(), _pose(1e-5).double()).item()
    assert tiny == pytest.approx(1e-5, rel=1e-4)  # no acos precision loss near 0
    batched = relative_rotation_deg(torch.stack([_pose(), _pose()]), torch.stack([_pose(5.0), _pose(-90.0, (1.0, 2.0, 3.0))]))
    torch.testing.assert_close(batched, torch.tensor([5.0, 90.0]), atol=1e-4, rtol=0)


def test_bad_arguments_are_named():
    depth = torch.ones(4, 6)
    with pytest.raises(ValueError, match="depth_a"):
        correspondences(depth[None], depth, _pose(), _pose(), K, K)
    with pytest.raises(ValueError, match="intrinsics_b"):
        correspondences(depth, depth, _pose(), _pose(), K, _pose())
    with pytest.raises(ValueError, match="stride"):
        correspondences(depth, depth, _pose(), _pose(), K, K, stride=0)
    with pytest.raises(ValueError, match="extrinsics"):
        relative_rotation_deg(K, K)
