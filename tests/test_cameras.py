import math

import pytest
import torch

from snd_hf.cameras import (
    Cameras,
    camera_rays,
    denormalize_intrinsics,
    matrix_to_quaternion_xyzw,
    normalize_intrinsics,
    opengl_to_opencv,
    pixel_centers,
    project_points,
    quaternion_xyzw_to_matrix,
    unproject_depth,
)


def _rotation_z(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _pose(rotation: torch.Tensor, translation) -> torch.Tensor:
    pose = torch.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = torch.tensor(translation)
    return pose


def test_pixel_centers_are_half_pixel_offsets():
    grid = pixel_centers(2, 4)
    assert grid.shape == (2, 4, 2)
    torch.testing.assert_close(grid[0, 0], torch.tensor([0.125, 0.25]))
    torch.testing.assert_close(grid[1, 3], torch.tensor([0.875, 0.75]))


def test_intrinsics_normalisation_round_trip():
    pixels = torch.tensor([[96.0, 0.0, 48.0], [0.0, 96.0, 32.0], [0.0, 0.0, 1.0]])
    normalised = normalize_intrinsics(pixels, height=64, width=96)
    torch.testing.assert_close(normalised, torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.5, 0.5], [0.0, 0.0, 1.0]]))
    torch.testing.assert_close(denormalize_intrinsics(normalised, 64, 96), pixels)


def test_principal_ray_points_forward():
    intrinsics = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.5, 0.5], [0.0, 0.0, 1.0]])
    rays = camera_rays(intrinsics, 2, 2)
    assert rays.shape == (2, 2, 3)
    torch.testing.assert_close(rays[..., 2], torch.ones(2, 2))
    # Pixel (0, 0) lies up and left of the principal point: negative x and y in OpenCV axes.
    assert rays[0, 0, 0] < 0 and rays[0, 0, 1] < 0


def test_unproject_then_project_returns_pixel_centres():
    intrinsics = torch.tensor([[0.9, 0.0, 0.52], [0.0, 1.3, 0.47], [0.0, 0.0, 1.0]])
    extrinsics = _pose(_rotation_z(0.3), [0.5, -0.2, 1.0])
    depth = 1.0 + torch.rand(5, 7)
    points = unproject_depth(depth, extrinsics, intrinsics)
    xy, z = project_points(points.reshape(-1, 3), extrinsics, intrinsics)
    torch.testing.assert_close(z, depth.reshape(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xy, pixel_centers(5, 7).reshape(-1, 2), atol=1e-5, rtol=1e-5)


def test_opengl_to_opencv_flips_camera_axes_and_is_an_involution():
    c2w_gl = _pose(_rotation_z(0.7), [1.0, 2.0, 3.0])
    c2w_cv = opengl_to_opencv(c2w_gl)
    # OpenGL looks down -z: the OpenCV forward axis is minus the OpenGL z axis, position kept.
    torch.testing.assert_close(c2w_cv[:3, 2], -c2w_gl[:3, 2])
    torch.testing.assert_close(c2w_cv[:3, 1], -c2w_gl[:3, 1])
    torch.testing.assert_close(c2w_cv[:3, 3], c2w_gl[:3, 3])
    torch.testing.assert_close(opengl_to_opencv(c2w_cv), c2w_gl)


def test_quaternion_round_trip_through_rotation_matrices():
    # Random unit quaternions, w made non-negative (the canonical sign matrix_to_quaternion returns);
    # includes near-180° rotations (w ~ 0), where a trace-based formula alone loses precision.
    generator = torch.Generator().manual_seed(0)
    quaternions = torch.nn.functional.normalize(torch.randn(256, 4, generator=generator, dtype=torch.float64), dim=-1)
    quaternions[:4] = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]], dtype=torch.float64)
    quaternions = quaternions * torch.where(quaternions[:, 3:] < 0, -1.0, 1.0)
    rotations = quaternion_xyzw_to_matrix(quaternions)
    torch.testing.assert_close(rotations @ rotations.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(256, 3, 3))
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(256, dtype=torch.float64))
    torch.testing.assert_close(matrix_to_quaternion_xyzw(rotations), quaternions, atol=1e-7, rtol=0)
    # A quarter turn about z: (x, y, z, w) = (0, 0, sin 45°, cos 45°).
    quarter = quaternion_xyzw_to_matrix(torch.tensor([0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)]))
    torch.testing.assert_close(quarter, _rotation_z(math.pi / 2), atol=1e-6, rtol=0)


def test_cameras_of_a_batch_keep_its_dimensions():
    """``Cameras.from_views`` bundles a scene batch's views [B, V] with their image size; shapes are checked."""
    extrinsics = torch.eye(4).repeat(2, 3, 1, 1)
    extrinsics[..., :3, 3] = torch.arange(18.0).view(2, 3, 3)
    views = {
        "image": torch.zeros(2, 3, 3, 28, 42),
        "extrinsics": extrinsics,
        "intrinsics": torch.eye(3).repeat(2, 3, 1, 1),
        "near": torch.full((2, 3), 0.1),
        "far": torch.full((2, 3), 20.0),
    }
    cameras = Cameras.from_views(views)
    assert cameras.image_size == (28, 42) and len(cameras) == 2
    assert torch.equal(cameras.centres, torch.arange(18.0).view(2, 3, 3))
    assert torch.equal(cameras[1].near, views["near"][1:])
    with pytest.raises(ValueError, match=r"Cameras.far must have shape \[2, 3\]"):
        Cameras(views["extrinsics"], views["intrinsics"], views["near"], views["far"][:, :2], (28, 42))
