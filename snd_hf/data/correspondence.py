"""Ground-truth pixel correspondences between two posed views with depth.

Every (strided) pixel of view A with valid depth is lifted to 3D and projected into view B;
it is a *visible* correspondence when it lands inside B, in front of the camera, and B's
depth at the landing pixel agrees with the projected depth within a relative tolerance (so
points occluded in B are rejected). The relative rotation between the views bins pairs by
viewpoint change, as Probe3D's correspondence benchmark does.

Pixel coordinates here are in pixels (not normalised): the centre of pixel ``(row i, column
j)`` is ``(x, y) = (j + 0.5, i + 0.5)``, i.e. :func:`~snd_hf.cameras.pixel_centers`
times ``(W, H)``.
"""

from __future__ import annotations

import math

import torch

from snd_hf.cameras import project_points, unproject_depth


def _check(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape[-len(shape) :]) != shape or tensor.dim() != len(shape):
        raise ValueError(f"`{name}` must have shape {list(shape)}, got {list(tensor.shape)}.")


def correspondences(
    depth_a: torch.Tensor,
    depth_b: torch.Tensor,
    extrinsics_a: torch.Tensor,
    extrinsics_b: torch.Tensor,
    intrinsics_a: torch.Tensor,
    intrinsics_b: torch.Tensor,
    *,
    stride: int = 1,
    depth_tolerance: float = 0.05,
) -> dict[str, torch.Tensor]:
    """Pixel pairs from view A to view B with visibility.

    Args:
        depth_a: z-depth of view A, 0 = invalid. [Ha, Wa]
        depth_b: z-depth of view B, 0 = invalid. [Hb, Wb]
        extrinsics_a: camera-to-world of A, OpenCV. [4, 4]
        extrinsics_b: camera-to-world of B, OpenCV. [4, 4]
        intrinsics_a: normalised intrinsics of A. [3, 3]
        intrinsics_b: normalised intrinsics of B. [3, 3]
        stride: sample every ``stride``-th row and column of A.
        depth_tolerance: largest relative difference ``|d_B - z| / z`` of a visible point.

    Returns:
        ``xy_a`` [N, 2] pixel centres of A's sampled pixels with valid depth, ``xy_b`` [N, 2]
        where they project in B (pixels), ``valid`` [N] bool (inside B, in front, visible),
        ``depth_a`` [N] their depth in A, ``depth_b`` [N] their projected z-depth in B and
        ``pixel_b`` [N, 2] the (row, column) of B's pixel they land in (meaningful where valid).
    """
    if depth_a.dim() != 2 or depth_b.dim() != 2:
        raise ValueError(f"`depth_a` and `depth_b` must have shape [H, W], got {list(depth_a.shape)} and {list(depth_b.shape)}.")
    for name, tensor, shape in (
        ("extrinsics_a", extrinsics_a, (4, 4)),
        ("extrinsics_b", extrinsics_b, (4, 4)),
        ("intrinsics_a", intrinsics_a, (3, 3)),
        ("intrinsics_b", intrinsics_b, (3, 3)),
    ):
        _check(name, tensor, shape)
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"`stride` must be a positive int, got {stride!r}.")
    if depth_tolerance <= 0:
        raise ValueError(f"`depth_tolerance` must be > 0, got {depth_tolerance}.")

    dtype = torch.float64  # double keeps the reprojection exact to far below a pixel
    height_a, width_a = depth_a.shape
    height_b, width_b = depth_b.shape
    points = unproject_depth(depth_a.to(dtype), extrinsics_a.to(dtype), intrinsics_a.to(dtype))  # [Ha, Wa, 3]
    rows = torch.arange(0, height_a, stride)
    cols = torch.arange(0, width_a, stride)
    grid_rows, grid_cols = torch.meshgrid(rows, cols, indexing="ij")
    depth_sampled = depth_a[grid_rows, grid_cols].reshape(-1)
    keep = depth_sampled > 0
    depth_sampled, grid_rows, grid_cols = depth_sampled[keep], grid_rows.reshape(-1)[keep], grid_cols.reshape(-1)[keep]
    points = points[grid_rows, grid_cols]  # [N, 3]

    xy_normalised, z_b = project_points(points, extrinsics_b.to(dtype), intrinsics_b.to(dtype))
    xy_b = xy_normalised * xy_normalised.new_tensor([width_b, height_b])
    inside = (z_b > 0) & (xy_b[:, 0] >= 0) & (xy_b[:, 0] < width_b) & (xy_b[:, 1] >= 0) & (xy_b[:, 1] < height_b)
    pixel_b = torch.stack([xy_b[:, 1].floor(), xy_b[:, 0].floor()], dim=-1).long()
    pixel_b[:, 0].clamp_(0, height_b - 1)
    pixel_b[:, 1].clamp_(0, width_b - 1)
    observed = depth_b.to(dtype)[pixel_b[:, 0], pixel_b[:, 1]]
    visible = (observed > 0) & ((observed - z_b).abs() <= depth_tolerance * z_b.abs())
    xy_a = torch.stack([grid_cols, grid_rows], dim=-1).to(dtype) + 0.5
    return {
        "xy_a": xy_a.to(depth_a.dtype),
        "xy_b": xy_b.to(depth_a.dtype),
        "valid": inside & visible,
        "depth_a": depth_sampled,
        "depth_b": z_b.to(depth_a.dtype),
        "pixel_b": pixel_b,
    }


def relative_rotation_deg(extrinsics_a: torch.Tensor, extrinsics_b: torch.Tensor) -> torch.Tensor:
    """Angle of the rotation between two camera orientations, in degrees.

    Args:
        extrinsics_a: camera-to-world. [..., 4, 4]
        extrinsics_b: camera-to-world. [..., 4, 4]

    Returns:
        angles in [0, 180]. [...]
    """
    if extrinsics_a.shape[-2:] != (4, 4) or extrinsics_b.shape[-2:] != (4, 4):
        raise ValueError(f"extrinsics must have shape [..., 4, 4], got {list(extrinsics_a.shape)} and {list(extrinsics_b.shape)}.")
    relative = extrinsics_a[..., :3, :3].transpose(-1, -2) @ extrinsics_b[..., :3, :3]
    # atan2(sin, cos) stays accurate for small angles, where acos of the trace does not.
    cosine = (relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0
    skew = relative - relative.transpose(-1, -2)
    sine = torch.stack([skew[..., 2, 1], skew[..., 0, 2], skew[..., 1, 0]], dim=-1).norm(dim=-1) / 2.0
    return torch.atan2(sine, cosine) * (180.0 / math.pi)
