"""Rebuild the packaged assets deterministically: ``python snd_hf/assets/make_assets.py``.

- ``demo/view{0,1,2}.png``: three 168x224 views of one small procedural room (checkered floor, two
  walls, two boxes, a sphere), ray cast exactly with Lambert shading: a scene with objects seen from
  several viewpoints, which is what 3D-aware features are about.
- ``default/``: the embedded default checkpoint that ``snd demo`` falls back to offline. A native SnD
  directory (``config.json`` + ``model.safetensors``) of a tiny DINOv2-architecture ViT (4 layers,
  64 channels, 4 heads, patch 14, 224-pixel position grid) with the standard initialisation from
  seed 0. It is untrained: it shows the pipeline, not SnD's feature quality. Any native SnD directory
  can replace it (same file names), e.g. a tiny checkpoint written by ``training/train.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ASSETS = Path(__file__).resolve().parent
DEMO_SIZE = (168, 224)  # height, width: 12 x 16 patches of 14 pixels
# Camera centres (x, y up, z) looking at the room centre; the views overlap.
DEMO_CAMERAS = ((-1.6, 1.5, -2.6), (0.2, 1.7, -3.0), (1.9, 1.4, -2.4))
LOOK_AT = (0.0, 0.5, 1.2)


def _camera_rays(eye: np.ndarray, height: int, width: int, fov_degrees: float = 60.0) -> np.ndarray:
    """Unit ray directions [H, W, 3] of a pinhole camera at ``eye`` looking at ``LOOK_AT`` (y up)."""
    forward = np.asarray(LOOK_AT) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(np.array([0.0, 1.0, 0.0]), forward)
    right /= np.linalg.norm(right)
    up = np.cross(forward, right)
    focal = 0.5 * width / np.tan(np.radians(fov_degrees) / 2)
    cols = np.arange(width) + 0.5 - width / 2
    rows = np.arange(height) + 0.5 - height / 2
    directions = forward * focal + right * cols[None, :, None] - up * rows[:, None, None]
    return directions / np.linalg.norm(directions, axis=-1, keepdims=True)


def _hit_plane(eye, rays, axis: int, offset: float):
    """Distance to the plane ``p[axis] = offset`` ([H, W], inf when missed) and its normal."""
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = (offset - eye[axis]) / rays[..., axis]
    distance = np.where(distance > 1e-6, distance, np.inf)
    normal = np.zeros(3)
    normal[axis] = 1.0 if eye[axis] > offset else -1.0  # facing the camera
    return distance, np.broadcast_to(normal, rays.shape)


def _hit_box(eye, rays, low, high):
    """Slab test against an axis-aligned box: distance [H, W] and outward normals [H, W, 3]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t_low = (np.asarray(low) - eye) / rays
        t_high = (np.asarray(high) - eye) / rays
    t_near = np.minimum(t_low, t_high)
    t_far = np.maximum(t_low, t_high)
    entry = t_near.max(axis=-1)
    hit = (entry <= t_far.min(axis=-1)) & (entry > 1e-6)
    face = t_near.argmax(axis=-1)
    normals = np.zeros(rays.shape)
    np.put_along_axis(normals, face[..., None], -np.sign(np.take_along_axis(rays, face[..., None], -1)), -1)
    return np.where(hit, entry, np.inf), normals


def _hit_sphere(eye, rays, centre, radius):
    offset = eye - np.asarray(centre)
    b = (rays * offset).sum(-1)
    disc = b**2 - (offset @ offset - radius**2)
    distance = -b - np.sqrt(np.maximum(disc, 0.0))
    distance = np.where((disc > 0) & (distance > 1e-6), distance, np.inf)
    points = eye + rays * np.where(np.isfinite(distance), distance, 0.0)[..., None]
    return distance, (points - centre) / radius


def render_room(eye: tuple[float, float, float], height: int, width: int) -> np.ndarray:
    """One view of the procedural room as ``uint8`` [H, W, 3]."""
    eye = np.asarray(eye, dtype=np.float64)
    rays = _camera_rays(eye, height, width)
    # (distance, normal, colour) per surface; the floor is a checkerboard, the rest plain.
    surfaces = [
        (*_hit_plane(eye, rays, 1, 0.0), None),
        (*_hit_plane(eye, rays, 2, 3.0), (0.80, 0.76, 0.66)),
        (*_hit_plane(eye, rays, 0, -2.5), (0.62, 0.70, 0.78)),
        (*_hit_plane(eye, rays, 0, 2.8), (0.78, 0.66, 0.62)),
        (*_hit_box(eye, rays, (-1.3, 0.0, 0.8), (-0.3, 0.9, 1.8)), (0.78, 0.22, 0.18)),
        (*_hit_box(eye, rays, (0.5, 0.0, 1.6), (1.4, 1.5, 2.4)), (0.20, 0.36, 0.75)),
        (*_hit_sphere(eye, rays, (0.2, 0.45, 0.3), 0.45), (0.25, 0.65, 0.30)),
    ]
    distances = np.stack([surface[0] for surface in surfaces])  # [S, H, W]
    nearest = distances.argmin(axis=0)
    depth = distances.min(axis=0)
    points = eye + rays * np.where(np.isfinite(depth), depth, 0.0)[..., None]
    checker = ((np.floor(points[..., 0] * 2) + np.floor(points[..., 2] * 2)) % 2)[..., None]
    floor_colour = 0.35 + 0.4 * checker * np.array([1.0, 0.95, 0.85])
    light = np.array([0.4, 0.8, -0.45])
    light /= np.linalg.norm(light)
    image = np.zeros((height, width, 3))
    for index, (_, normals, colour) in enumerate(surfaces):
        mask = nearest == index
        albedo = floor_colour[mask] if colour is None else np.asarray(colour)
        shade = 0.35 + 0.65 * np.clip(normals[mask] @ light, 0.0, 1.0)
        image[mask] = albedo * shade[..., None]
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)


def make_demo_images(folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, eye in enumerate(DEMO_CAMERAS):
        path = folder / f"view{index}.png"
        Image.fromarray(render_room(eye, *DEMO_SIZE)).save(path, optimize=True)
        paths.append(path)
    return paths


def make_default_checkpoint(folder: Path) -> Path:
    from snd_hf import SnDConfig, SnDModel

    config = SnDConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=224,
        training_info={"source": "untrained: standard initialisation, torch seed 0 (snd_hf/assets/make_assets.py)"},
    )
    torch.manual_seed(0)
    model = SnDModel(config).eval()
    model.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    for written in make_demo_images(ASSETS / "demo"):
        print(written)
    print(make_default_checkpoint(ASSETS / "default"))
