"""Camera conventions: the one place in snd-hf where they are defined.

Every module of snd-hf (data, lifting, rendering, evaluation) speaks this convention:

- **extrinsics** ``[..., 4, 4]``: camera-to-world matrices in OpenCV axes
  (x right, y down, z forward).
- **intrinsics** ``[..., 3, 3]``: normalised by the image size, i.e. row 0 divided by the
  width and row 1 by the height (``fx/W, cx/W; fy/H, cy/H``), so one matrix serves every
  resolution of a view. This is the layout of the original SnD/MVSplat data pipeline.
- **pixel coordinates** are normalised to ``[0, 1]``; the centre of pixel ``(row i, column
  j)`` of an ``H x W`` image is ``((j + 0.5) / W, (i + 0.5) / H)``.
- **depth** is z-depth (distance along the optical axis), not distance along the ray.
- **near / far** ``[...]``: per-view clipping distances in z-depth, in scene units (metres
  for indoor scans).

:class:`Cameras` bundles them with the image size they render.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Cameras:
    """Pinhole cameras of one image size, in the conventions above.

    Attributes:
        extrinsics: camera-to-world (c2w), OpenCV axes. [..., V, 4, 4]
        intrinsics: normalised intrinsics. [..., V, 3, 3]
        near: near clipping z-depth, scene units. [..., V]
        far: far clipping z-depth, scene units. [..., V]
        image_size: ``(H, W)`` of the images they render.
    """

    extrinsics: torch.Tensor
    intrinsics: torch.Tensor
    near: torch.Tensor
    far: torch.Tensor
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        views = tuple(self.extrinsics.shape[:-2]) if self.extrinsics.ndim >= 3 else (-1,)
        expected = {
            "extrinsics": (self.extrinsics, (*views, 4, 4)),
            "intrinsics": (self.intrinsics, (*views, 3, 3)),
            "near": (self.near, views),
            "far": (self.far, views),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"Cameras.{name} must have shape {list(shape)}, got {list(tensor.shape)}.")
        height, width = self.image_size
        if int(height) != height or int(width) != width or height < 1 or width < 1:
            raise ValueError(f"Cameras.image_size must be (H, W) positive integers, got {self.image_size!r}.")
        self.image_size = (int(height), int(width))

    @classmethod
    def from_views(cls, views: dict[str, torch.Tensor]) -> Cameras:
        """The cameras of a scene batch's ``context`` or ``target`` views (see :mod:`snd_hf.data`). [B, V, ...]"""
        return cls(views["extrinsics"], views["intrinsics"], views["near"], views["far"], tuple(views["image"].shape[-2:]))

    def __len__(self) -> int:
        return self.extrinsics.shape[0]

    def __getitem__(self, index: int | slice | list[int] | torch.Tensor) -> Cameras:
        """A subset along the first dimension (an int keeps that dimension, of size 1)."""
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"camera {index} out of range for {len(self)} cameras")
            index = [index]
        return Cameras(self.extrinsics[index], self.intrinsics[index], self.near[index], self.far[index], self.image_size)

    def unsqueeze(self, dim: int) -> Cameras:
        """The same cameras with a new leading dimension of size 1 at ``dim`` (``0 <= dim <=``
        the number of leading dims), e.g. ``[V] → [V, 1]``: one camera per batch element."""
        if not 0 <= dim <= self.near.ndim:
            raise ValueError(f"`dim` must be in [0, {self.near.ndim}] (a leading dimension), got {dim}.")
        return Cameras(
            self.extrinsics.unsqueeze(dim), self.intrinsics.unsqueeze(dim), self.near.unsqueeze(dim), self.far.unsqueeze(dim), self.image_size
        )

    @property
    def centres(self) -> torch.Tensor:
        """Camera centres in world space. [..., V, 3]"""
        return self.extrinsics[..., :3, 3]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Cameras:
        def move(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(device=device, dtype=dtype)

        return Cameras(move(self.extrinsics), move(self.intrinsics), move(self.near), move(self.far), self.image_size)


# Flips y and z: maps OpenGL/Blender camera axes (x right, y up, z backward) to OpenCV's.
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def opengl_to_opencv(c2w: torch.Tensor) -> torch.Tensor:
    """Convert camera-to-world matrices from OpenGL camera axes to OpenCV camera axes.

    Only the camera axes change; the world frame is kept (the original SnD also conjugated
    the world by a 180° rotation, which is harmless but makes poses differ from the source).
    The conversion is its own inverse.

    Args:
        c2w: camera-to-world matrices with OpenGL camera axes. [..., 4, 4]

    Returns:
        camera-to-world matrices with OpenCV camera axes. [..., 4, 4]
    """
    _check_matrix("c2w", c2w, 4)
    return c2w @ _GL_TO_CV.to(device=c2w.device, dtype=c2w.dtype)



def normalize_intrinsics(intrinsics: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel intrinsics ``[..., 3, 3]`` of an ``height x width`` image → normalised intrinsics."""
    _check_matrix("intrinsics", intrinsics, 3)
    scale = intrinsics.new_tensor([1.0 / width, 1.0 / height, 1.0])
    return intrinsics * scale[:, None]


def denormalize_intrinsics(intrinsics: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Normalised intrinsics ``[..., 3, 3]`` → pixel intrinsics of an ``height x width`` image."""
    _check_matrix("intrinsics", intrinsics, 3)
    scale = intrinsics.new_tensor([float(width), float(height), 1.0])
    return intrinsics * scale[:, None]


def pixel_centers(
    height: int, width: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Normalised coordinates of every pixel centre, ``(x, y)`` in ``[0, 1]``.

    Returns:
        the grid, row-major. [H, W, 2]
    """
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)


def camera_rays(intrinsics: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Camera-frame ray through every pixel centre, scaled so that its z component is 1.

    Args:
        intrinsics: normalised intrinsics. [..., 3, 3]

    Returns:
        rays in camera coordinates. [..., H, W, 3]
    """
    _check_matrix("intrinsics", intrinsics, 3)
    xy = pixel_centers(height, width, intrinsics.device, intrinsics.dtype)
    homogeneous = torch.cat([xy, torch.ones_like(xy[..., :1])], dim=-1)  # [H, W, 3]
    inverse = torch.linalg.inv(intrinsics)[..., None, None, :, :]  # [..., 1, 1, 3, 3]
    return (inverse @ homogeneous[..., None]).squeeze(-1)


def unproject_depth(depth: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Lift every pixel to world space with its z-depth.

    Args:
        depth: z-depth per pixel. [..., H, W]
        extrinsics: camera-to-world, OpenCV. [..., 4, 4]
        intrinsics: normalised intrinsics. [..., 3, 3]

    Returns:
        world points. [..., H, W, 3]
    """
    height, width = depth.shape[-2:]
    points_camera = camera_rays(intrinsics, height, width) * depth[..., None]
    return transform_points(points_camera, extrinsics[..., None, None, :, :])


def transform_points(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply a rigid 4x4 transform to points ``[..., 3]`` (``matrix`` broadcasts as ``[..., 4, 4]``)."""
    return (matrix[..., :3, :3] @ points[..., None]).squeeze(-1) + matrix[..., :3, 3]


def project_points(
    points: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points into cameras.

    Args:
        points: world points. [..., N, 3]
        extrinsics: camera-to-world, OpenCV. [..., 4, 4]
        intrinsics: normalised intrinsics. [..., 3, 3]

    Returns:
        xy: normalised pixel coordinates (meaningless where depth <= 0). [..., N, 2]
        depth: z-depth in the camera. [..., N]
    """
    world_to_camera = torch.linalg.inv(extrinsics)[..., None, :, :]
    points_camera = transform_points(points, world_to_camera)
    depth = points_camera[..., 2]
    projected = (intrinsics[..., None, :, :] @ points_camera[..., None]).squeeze(-1)
    xy = projected[..., :2] / depth[..., None].clamp_min(1e-8)
    return xy, depth


def quaternion_xyzw_to_matrix(quaternions: torch.Tensor) -> torch.Tensor:
    """Rotation matrices of quaternions ``(x, y, z, w)`` (normalised on the fly). [..., 4] → [..., 3, 3]"""
    x, y, z, w = quaternions.unbind(dim=-1)
    two_s = 2.0 / ((quaternions * quaternions).sum(dim=-1) + 1e-8)
    rows = (
        1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w),
        two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w),
        two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y),
    )  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*quaternions.shape[:-1], 3, 3)


def matrix_to_quaternion_xyzw(rotations: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (x, y, z, w), w >= 0, of proper rotation matrices. [..., 3, 3] → [..., 4]

    Shepperd's method: the component of largest magnitude comes from the diagonal, the others from
    the off-diagonal sums and differences divided by it, which keeps every case well conditioned.
    """
    m = rotations
    squares = torch.stack(
        [
            1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],
            1 + m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2],
        ],
        dim=-1,
    )  # 4x², 4y², 4z², 4w²
    largest = 0.5 * squares.clamp_min(1e-12).sqrt()  # each candidate's own component
    sum_xy, sum_xz, sum_yz = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]
    diff_x, diff_y, diff_z = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    x, y, z, w = largest.unbind(-1)
    candidates = torch.stack(
        [
            torch.stack([x, sum_xy / (4 * x), sum_xz / (4 * x), diff_x / (4 * x)], dim=-1),
            torch.stack([sum_xy / (4 * y), y, sum_yz / (4 * y), diff_y / (4 * y)], dim=-1),
            torch.stack([sum_xz / (4 * z), sum_yz / (4 * z), z, diff_z / (4 * z)], dim=-1),
            torch.stack([diff_x / (4 * w), diff_y / (4 * w), diff_z / (4 * w), w], dim=-1),
        ],
        dim=-2,
    )  # [..., 4 candidates, 4]
    choice = squares.argmax(-1)
    quaternions = candidates.gather(-2, choice[..., None, None].expand(*choice.shape, 1, 4)).squeeze(-2)
    quaternions = quaternions * torch.where(quaternions[..., 3:] < 0, -1.0, 1.0)
    return F.normalize(quaternions, dim=-1)


def _check_matrix(name: str, matrix: torch.Tensor, size: int) -> None:
    if matrix.shape[-2:] != (size, size):
        raise ValueError(f"`{name}` must have shape [..., {size}, {size}], got {tuple(matrix.shape)}.")
