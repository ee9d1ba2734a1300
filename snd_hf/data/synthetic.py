"""Procedural indoor scenes, ray cast exactly and written in the ScanNet++ (SnD/FiT3D) layout.

Every scene is a closed room (four walls, floor, ceiling) holding a few boxes, spheres and
cylinders with procedural solid textures (checkers, stripes, value noise), seen by a camera
moving smoothly around the room while looking into it. Each frame is ray cast at the pixel
centres (no approximation), giving RGB with simple shading, z-depth, camera-frame normals,
instance ids and semantic class ids. A scene folder looks like::

    scenes/synth_0000/
        transforms_train.json          fl_x, fl_y, cx, cy, w, h; frames[].transform_matrix (OpenGL c2w)
        images/frame_000000.png        RGB
        instance_segmentation/frame_000000.png.png   16-bit instance ids (1..K)
        depth/frame_000000.png         16-bit z-depth in millimetres, 0 = invalid
        normals/frame_000000.png       8-bit RGB camera-frame normals, n = rgb / 127.5 - 1
        semantics/frame_000000.png     8-bit class ids (see SEMANTIC_CLASSES)

With ``glossy=True`` (``snd synth --glossy``) some objects also get a Blinn–Phong specular term
lit by a few point lights, so that their highlights move with the camera, and every frame gets
its ground truth::

        specular/frame_000000.png      16-bit specular radiance added to the image, value / 65535
        highlights/frame_000000.png    8-bit mask, 255 where the specular radiance exceeds
                                       HIGHLIGHT_THRESHOLD

``transforms_train.json`` then lists the ``materials`` (instance, shininess, specular strength)
and ``lights``. With ``glossy=False`` (the default) every output is exactly as without the option.

Generate from Python with :func:`generate_scenes` / :func:`ensure_synthetic_scenes`, or with
``snd synth --scenes 8 --frames 24 --size 96x128 --seed 0 --out DIR``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..run_folder import read_manifest, replace_folder
from ..schema import read_json

# Semantic class ids written to semantics/*.png; 0 is reserved for "unlabelled".
SEMANTIC_CLASSES: tuple[str, ...] = ("unlabelled", "wall", "floor", "ceiling", "box", "sphere", "cylinder")
_CLASS_ID = {name: index for index, name in enumerate(SEMANTIC_CLASSES)}

MARKER_NAME = "snd_synthetic.json"
_FORMAT_VERSION = 1
_EPS = 1e-6
_OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])
HIGHLIGHT_THRESHOLD = 0.1  # specular radiance above which a pixel belongs to a highlight


@dataclass
class _Surface:
    """One textured primitive of a room; ``kind`` selects the intersection routine."""

    kind: str  # "room" | "box" | "sphere" | "cylinder"
    instance: int  # first instance id (the room uses six: 4 walls, floor, ceiling)
    center: np.ndarray  # [3]
    size: np.ndarray  # room/box: half extents [3]; sphere: [r, 0, 0]; cylinder: [r, half height, 0]
    yaw: float  # rotation about the world z axis (boxes)
    texture: str  # "checkers" | "stripes" | "noise"
    colors: np.ndarray  # [2, 3] the two colours the texture mixes
    scale: float  # texture period in metres
    direction: np.ndarray  # [3] stripe direction
    phase: np.ndarray  # [3] texture offset, keeps checker edges off the faces
    seed: int  # value-noise lattice seed


@dataclass
class _Scene:
    surfaces: list[_Surface]
    room_textures: list[_Surface]  # one texture per room face: walls x-, x+, y-, y+, floor, ceiling
    room: np.ndarray  # [3] room extents (x, y, z), floor at z = 0, corner at the origin
    light: np.ndarray  # [3] point light position


@dataclass
class _Gloss:
    """Blinn–Phong specular materials of a glossy scene (white point lights, no shadows)."""

    shininess: dict[int, float]  # instance id -> Blinn–Phong exponent
    strength: dict[int, float]  # instance id -> specular coefficient k_s
    lights: np.ndarray  # [L, 3] point light positions


def _random_gloss(rng: np.random.Generator, scene: _Scene) -> _Gloss:
    """Glossy materials for some of the objects and 2-3 point lights near the ceiling.

    Drawn from their own generator, so the scene, its textures and its cameras are the same
    with and without gloss.
    """
    objects = [surface.instance for surface in scene.surfaces if surface.kind != "room"]
    glossy = [instance for instance in objects if rng.uniform() < 0.6]
    if not glossy:
        glossy = [int(rng.choice(objects))]
    shininess = {instance: float(np.exp(rng.uniform(np.log(16.0), np.log(96.0)))) for instance in glossy}
    strength = {instance: float(rng.uniform(0.45, 0.8)) for instance in glossy}
    extra = int(rng.integers(1, 3))
    room = scene.room
    lights = [scene.light] + [
        np.array([rng.uniform(0.2, 0.8) * room[0], rng.uniform(0.2, 0.8) * room[1], room[2] - rng.uniform(0.2, 0.6)])
        for _ in range(extra)
    ]
    return _Gloss(shininess=shininess, strength=strength, lights=np.stack(lights))


def _specular(
    gloss: _Gloss,
    points: np.ndarray,  # [N, 3] world surface points
    normals: np.ndarray,  # [N, 3] unit world normals, facing the camera side of the surface
    eyes: np.ndarray,  # [N, 3] camera centre of each ray
    instance: np.ndarray,  # [N] instance id of each point
) -> np.ndarray:
    """Blinn–Phong specular radiance ``k_s Σ_lights max(0, n·h)^shininess`` (lights on the normal's side). [N]"""
    radiance = np.zeros(len(points))
    to_eye = eyes - points
    to_eye /= np.linalg.norm(to_eye, axis=-1, keepdims=True)
    for index, exponent in gloss.shininess.items():
        mask = instance == index
        if not mask.any():
            continue
        n, v = normals[mask], to_eye[mask]
        for light in gloss.lights:
            to_light = light - points[mask]
            to_light /= np.linalg.norm(to_light, axis=-1, keepdims=True)
            half = to_light + v
            half /= np.maximum(np.linalg.norm(half, axis=-1, keepdims=True), _EPS)
            lit = ((n * to_light).sum(-1) > 0) & ((n * v).sum(-1) > 0)
            radiance[mask] += np.where(lit, np.clip((n * half).sum(-1), 0.0, 1.0) ** exponent, 0.0)
        radiance[mask] *= gloss.strength[index]
    return radiance


def _random_surface(rng: np.random.Generator, kind: str, instance: int, center, size, yaw=0.0) -> _Surface:
    direction = rng.normal(size=3)
    return _Surface(
        kind=kind,
        instance=instance,
        center=np.asarray(center, dtype=np.float64),
        size=np.asarray(size, dtype=np.float64),
        yaw=float(yaw),
        texture=str(rng.choice(["checkers", "stripes", "noise"])),
        colors=rng.uniform(0.1, 0.95, size=(2, 3)),
        scale=float(rng.uniform(0.12, 0.45)),
        direction=direction / np.linalg.norm(direction),
        phase=rng.uniform(0.0, 1.0, size=3),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def _random_scene(rng: np.random.Generator) -> _Scene:
    room = np.array([rng.uniform(4.0, 7.0), rng.uniform(4.0, 7.0), rng.uniform(2.6, 3.2)])
    surfaces = [_random_surface(rng, "room", 1, room / 2, room / 2)]
    room_textures = [_random_surface(rng, "room", 1 + face, room / 2, room / 2) for face in range(6)]
    # Objects stay within this radius of the room centre; the cameras circle outside it.
    reach = 0.25 * min(room[0], room[1])
    instance = 7
    for _ in range(int(rng.integers(3, 7))):
        kind = str(rng.choice(["box", "box", "sphere", "cylinder"]))
        if kind == "box":
            half = rng.uniform(0.15, 0.45, size=3)
            extent = float(np.hypot(half[0], half[1]))
            z = half[2] if rng.uniform() < 0.8 else rng.uniform(half[2], 1.6)  # mostly on the floor
            size, yaw = half, rng.uniform(0, math.pi)
        elif kind == "sphere":
            radius = rng.uniform(0.15, 0.4)
            extent, z = radius, radius if rng.uniform() < 0.6 else rng.uniform(radius, 1.5)
            size, yaw = np.array([radius, 0.0, 0.0]), 0.0
        else:
            radius, half_height = rng.uniform(0.1, 0.35), rng.uniform(0.25, 0.7)
            extent, z = radius, half_height
            size, yaw = np.array([radius, half_height, 0.0]), 0.0
        angle, distance = rng.uniform(0, 2 * math.pi), rng.uniform(0, max(reach - extent, 0.0))
        center = (room[0] / 2 + distance * math.cos(angle), room[1] / 2 + distance * math.sin(angle), z)
        surfaces.append(_random_surface(rng, kind, instance, center, size, yaw))
        instance += 1
    light = np.array([room[0] / 2 + rng.uniform(-0.5, 0.5), room[1] / 2 + rng.uniform(-0.5, 0.5), room[2] - 0.2])
    return _Scene(surfaces=surfaces, room_textures=room_textures, room=room, light=light)


def _trajectory(rng: np.random.Generator, room: np.ndarray, num_frames: int) -> np.ndarray:
    """Smooth OpenCV camera-to-world poses circling the room centre and looking into it. [F, 4, 4]"""
    center = np.array([room[0] / 2, room[1] / 2])
    radius = 0.42 * min(room[0], room[1])
    start, span = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(50.0, 80.0))
    bob, wobble = rng.uniform(0, 2 * math.pi, size=2)
    s = np.linspace(0.0, 1.0, num_frames)
    theta = start + span * (s - 0.5)
    ring = radius * (1.0 - 0.08 * np.sin(2 * math.pi * s + wobble))
    eye = np.stack(
        [center[0] + ring * np.cos(theta), center[1] + ring * np.sin(theta), 1.35 + 0.15 * np.sin(2 * math.pi * s + bob)],
        axis=-1,
    )
    look = np.stack(
        [
            center[0] + 0.3 * np.cos(2 * math.pi * s + bob),
            center[1] + 0.3 * np.sin(2 * math.pi * s + wobble),
            np.full_like(s, 0.8),
        ],
        axis=-1,
    )
    forward = look - eye
    forward /= np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(forward, right)
    poses = np.tile(np.eye(4), (num_frames, 1, 1))
    poses[:, :3, 0], poses[:, :3, 1], poses[:, :3, 2], poses[:, :3, 3] = right, down, forward, eye
    return poses


# ---------------------------------------------------------------------------------------------
# Ray casting. Rays have camera-frame direction (x, y, 1), so the ray parameter is z-depth.
# ---------------------------------------------------------------------------------------------


def _rotation_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _safe(direction: np.ndarray) -> np.ndarray:
    return np.where(np.abs(direction) < 1e-12, 1e-12, direction)


def _intersect_room(surface: _Surface, origins: np.ndarray, directions: np.ndarray):
    """Exit point of rays cast from inside the room box; each of the six faces is an instance."""
    lo, hi = surface.center - surface.size, surface.center + surface.size
    d = _safe(directions)
    exit_t = np.where(d > 0, (hi - origins) / d, (lo - origins) / d)  # [N, 3]
    axis = exit_t.argmin(axis=-1)
    t = np.take_along_axis(exit_t, axis[:, None], axis=-1)[:, 0]
    positive = np.take_along_axis(d, axis[:, None], axis=-1)[:, 0] > 0
    normals = np.zeros_like(origins)
    normals[np.arange(len(t)), axis] = np.where(positive, -1.0, 1.0)  # inward
    # Faces: x- x+ y- y+ are walls 0-3, z- is the floor (4), z+ the ceiling (5).
    face = 2 * axis + positive
    return t, normals, face


def _intersect_box(surface: _Surface, origins: np.ndarray, directions: np.ndarray):
    rotation = _rotation_z(surface.yaw)
    local_origin = (origins - surface.center) @ rotation  # rotation.T applied to row vectors
    local_direction = _safe(directions @ rotation)
    t1 = (-surface.size - local_origin) / local_direction
    t2 = (surface.size - local_origin) / local_direction
    near_t, far_t = np.minimum(t1, t2), np.maximum(t1, t2)
    axis = near_t.argmax(axis=-1)
    t_enter, t_exit = near_t.max(axis=-1), far_t.min(axis=-1)
    t = np.where((t_enter <= t_exit) & (t_enter > _EPS), t_enter, np.inf)
    local_normals = np.zeros_like(origins)
    sign = -np.sign(np.take_along_axis(local_direction, axis[:, None], axis=-1)[:, 0])
    local_normals[np.arange(len(t)), axis] = sign
    return t, local_normals @ rotation.T, np.zeros(len(t), dtype=np.int64)


def _intersect_sphere(surface: _Surface, origins: np.ndarray, directions: np.ndarray):
    radius = surface.size[0]
    offset = origins - surface.center
    a = (directions * directions).sum(-1)
    b = (offset * directions).sum(-1)
    c = (offset * offset).sum(-1) - radius**2
    disc = b * b - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    t = np.where((disc > 0) & (t > _EPS), t, np.inf)
    normals = (offset + t[:, None] * directions) / radius
    return t, normals, np.zeros(len(t), dtype=np.int64)


def _intersect_cylinder(surface: _Surface, origins: np.ndarray, directions: np.ndarray):
    """A vertical capped cylinder."""
    radius, half_height = surface.size[0], surface.size[1]
    offset = origins - surface.center
    a = (directions[:, :2] ** 2).sum(-1)
    b = (offset[:, :2] * directions[:, :2]).sum(-1)
    c = (offset[:, :2] ** 2).sum(-1) - radius**2
    disc = b * b - a * c
    t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / np.maximum(a, 1e-12)
    z_side = offset[:, 2] + t_side * directions[:, 2]
    t_side = np.where((disc > 0) & (t_side > _EPS) & (np.abs(z_side) <= half_height), t_side, np.inf)
    dz = _safe(directions[:, 2])
    candidates = [t_side]
    for cap in (half_height, -half_height):
        t_cap = (cap - offset[:, 2]) / dz
        xy = offset[:, :2] + t_cap[:, None] * directions[:, :2]
        candidates.append(np.where((t_cap > _EPS) & ((xy**2).sum(-1) <= radius**2), t_cap, np.inf))
    stacked = np.stack(candidates, axis=-1)
    which = stacked.argmin(axis=-1)
    t = stacked.min(axis=-1)
    hit = offset + np.where(np.isfinite(t), t, 0.0)[:, None] * directions
    normals = np.zeros_like(origins)
    normals[:, :2] = hit[:, :2] / radius
    normals[which == 1] = (0.0, 0.0, 1.0)
    normals[which == 2] = (0.0, 0.0, -1.0)
    return t, normals, np.zeros(len(t), dtype=np.int64)


_INTERSECT = {"room": _intersect_room, "box": _intersect_box, "sphere": _intersect_sphere, "cylinder": _intersect_cylinder}


def _hash_noise(points: np.ndarray, seed: int) -> np.ndarray:
    """Trilinear value noise in [0, 1] on the unit integer lattice. [N, 3] -> [N]"""
    base = np.floor(points)
    frac = points - base
    frac = frac * frac * (3.0 - 2.0 * frac)  # smoothstep keeps the noise C1 across cells
    corner = base.astype(np.int64)
    value = np.zeros(len(points))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                key = (corner[:, 0] + dx) * 73856093 ^ (corner[:, 1] + dy) * 19349663 ^ (corner[:, 2] + dz) * 83492791
                key = (key ^ seed) * 2654435761 % 4294967291
                lattice = (key % 65536) / 65535.0
                weight = (frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
                value += weight * (frac[:, 2] if dz else 1 - frac[:, 2]) * lattice
    return value


def _albedo(surface: _Surface, local_points: np.ndarray) -> np.ndarray:
    """Solid texture colour at surface points in the primitive's frame. [N, 3] -> [N, 3]"""
    scaled = local_points / surface.scale + surface.phase
    if surface.texture == "checkers":
        mix = (np.floor(scaled).astype(np.int64).sum(-1) % 2).astype(np.float64)
    elif surface.texture == "stripes":
        mix = np.clip(0.5 + 1.5 * np.sin(2 * math.pi * (scaled @ surface.direction)), 0.0, 1.0)
    else:
        mix = 0.65 * _hash_noise(scaled, surface.seed) + 0.35 * _hash_noise(2.7 * scaled, surface.seed + 1)
    colors = surface.colors[0] * (1 - mix[:, None]) + surface.colors[1] * mix[:, None]
    # A fine grain everywhere so that no surface is textureless.
    grain = _hash_noise(local_points * 23.0, surface.seed + 2)
    return colors * (0.8 + 0.4 * grain[:, None])


def _render(
    scene: _Scene, poses: np.ndarray, intrinsics: np.ndarray, height: int, width: int, gloss: _Gloss | None = None
) -> dict[str, np.ndarray]:
    """Ray cast every pixel centre of every pose.

    Args:
        poses: camera-to-world, OpenCV. [F, 4, 4]
        intrinsics: pixel intrinsics. [3, 3]
        gloss: specular materials, or None for a matte scene.

    Returns:
        ``image`` [F, H, W, 3] in [0, 1], ``depth`` [F, H, W] z-depth, ``normals`` [F, H, W, 3]
        camera frame, ``instance`` / ``semantic`` [F, H, W] int64; with ``gloss`` also
        ``specular`` [F, H, W] (the radiance added to every colour channel before clipping to
        [0, 1]) and ``highlight`` [F, H, W] bool (``specular > HIGHLIGHT_THRESHOLD``).
    """
    num_frames = len(poses)
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    pixels = np.stack([cols, rows, np.ones_like(cols)], axis=-1).reshape(-1, 3)
    rays_camera = pixels @ np.linalg.inv(intrinsics).T  # [HW, 3], z = 1
    directions = np.einsum("fij,pj->fpi", poses[:, :3, :3], rays_camera).reshape(-1, 3)
    origins = np.repeat(poses[:, :3, 3], height * width, axis=0)

    depth = np.full(len(origins), np.inf)
    normals = np.zeros_like(origins)
    owner = np.zeros(len(origins), dtype=np.int64)
    face = np.zeros(len(origins), dtype=np.int64)
    for index, surface in enumerate(scene.surfaces):
        t, surface_normals, surface_face = _INTERSECT[surface.kind](surface, origins, directions)
        closer = t < depth
        depth[closer], normals[closer], owner[closer], face[closer] = t[closer], surface_normals[closer], index, surface_face[closer]
    if not np.isfinite(depth).all():
        raise RuntimeError("a camera ray escaped the room; the scene is not closed")

    points = origins + depth[:, None] * directions
    image = np.zeros_like(points)
    instance = np.zeros(len(points), dtype=np.int64)
    semantic = np.zeros(len(points), dtype=np.int64)
    for index, surface in enumerate(scene.surfaces):
        mask = owner == index
        local = (points[mask] - surface.center) @ _rotation_z(surface.yaw)
        instance[mask] = surface.instance + face[mask]
        if surface.kind == "room":
            semantic[mask] = np.array([_CLASS_ID[n] for n in ("wall",) * 4 + ("floor", "ceiling")])[face[mask]]
            albedo = np.zeros_like(local)
            for face_index, texture in enumerate(scene.room_textures):
                on_face = face[mask] == face_index
                albedo[on_face] = _albedo(texture, local[on_face])
            image[mask] = albedo
        else:
            semantic[mask] = _CLASS_ID[surface.kind]
            image[mask] = _albedo(surface, local)

    to_light = scene.light - points
    to_light /= np.linalg.norm(to_light, axis=-1, keepdims=True)
    sun = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    shading = 0.3 + 0.5 * np.clip((normals * to_light).sum(-1), 0, 1) + 0.2 * np.abs(normals @ sun)
    image = np.clip(image * shading[:, None], 0.0, 1.0)
    if gloss is not None:
        # Normals of boxes and the room already face the camera; sphere and cylinder normals point
        # outwards, towards every camera that sees them.
        specular = _specular(gloss, points, normals, origins, instance)
        image = np.clip(image + specular[:, None], 0.0, 1.0)

    rotations = np.repeat(poses[:, :3, :3], height * width, axis=0)
    normals_camera = np.einsum("nji,nj->ni", rotations, normals)  # R^T n
    shape = (num_frames, height, width)
    rendered = {
        "image": image.reshape(*shape, 3),
        "depth": depth.reshape(shape),
        "normals": normals_camera.reshape(*shape, 3),
        "instance": instance.reshape(shape),
        "semantic": semantic.reshape(shape),
    }
    if gloss is not None:
        rendered["specular"] = specular.reshape(shape)
        rendered["highlight"] = rendered["specular"] > HIGHLIGHT_THRESHOLD
    return rendered


def _pixel_intrinsics(height: int, width: int) -> np.ndarray:
    focal = width / (2.0 * math.tan(math.radians(35.0)))  # 70 degrees horizontal field of view
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def render_synthetic_scene(
    scene_index: int, num_frames: int = 24, height: int = 96, width: int = 128, seed: int = 0, glossy: bool = False
) -> dict[str, np.ndarray]:
    """Render one generated scene in memory, exactly as :func:`generate_scenes` writes it.

    Args:
        glossy: give some objects Blinn–Phong highlights (see the module docstring); the scene's
            geometry, textures and cameras do not change.

    Returns:
        the :func:`_render` arrays plus ``extrinsics`` [F, 4, 4] (camera-to-world, OpenCV) and
        ``intrinsics`` [3, 3] in pixels; with ``glossy`` also ``specular`` / ``highlight``
        [F, H, W], ``materials`` (a list of ``{"instance", "shininess", "strength"}``) and
        ``lights`` [L, 3] (world positions).
    """
    rng = np.random.default_rng([seed, scene_index])
    scene = _random_scene(rng)
    poses = _trajectory(rng, scene.room, num_frames)
    intrinsics = _pixel_intrinsics(height, width)
    gloss = _random_gloss(np.random.default_rng([seed, scene_index, 1]), scene) if glossy else None
    rendered = {**_render(scene, poses, intrinsics, height, width, gloss), "extrinsics": poses, "intrinsics": intrinsics}
    if gloss is not None:
        rendered["materials"] = [
            {"instance": instance, "shininess": gloss.shininess[instance], "strength": gloss.strength[instance]}
            for instance in sorted(gloss.shininess)
        ]
        rendered["lights"] = gloss.lights
    return rendered


def _write_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path)


def _write_scene(rendered: dict[str, np.ndarray], scene_dir: Path, image_format: str) -> None:
    folders = ("images", "instance_segmentation", "depth", "normals", "semantics")
    if "specular" in rendered:
        folders += ("specular", "highlights")
    for folder in folders:
        (scene_dir / folder).mkdir(parents=True)
    height, width = rendered["depth"].shape[1:]
    intrinsics = rendered["intrinsics"]
    frames = []
    for index, pose in enumerate(rendered["extrinsics"]):
        name = f"frame_{index:06d}.{image_format}"
        stem = f"frame_{index:06d}.png"
        _write_png(np.round(rendered["image"][index] * 255).astype(np.uint8), scene_dir / "images" / name)
        _write_png(rendered["instance"][index].astype(np.uint16), scene_dir / "instance_segmentation" / f"{name}.png")
        depth_mm = np.clip(np.round(rendered["depth"][index] * 1000.0), 0, 65535).astype(np.uint16)
        _write_png(depth_mm, scene_dir / "depth" / stem)
        normals = np.clip(np.round((rendered["normals"][index] + 1.0) * 127.5), 0, 255).astype(np.uint8)
        _write_png(normals, scene_dir / "normals" / stem)
        _write_png(rendered["semantic"][index].astype(np.uint8), scene_dir / "semantics" / stem)
        if "specular" in rendered:
            specular = np.clip(np.round(rendered["specular"][index] * 65535.0), 0, 65535).astype(np.uint16)
            _write_png(specular, scene_dir / "specular" / stem)
            _write_png(rendered["highlight"][index].astype(np.uint8) * 255, scene_dir / "highlights" / stem)
        frames.append({"file_path": name, "transform_matrix": (pose @ _OPENCV_TO_OPENGL).tolist(), "is_bad": False})
    transforms = {
        "fl_x": float(intrinsics[0, 0]),
        "fl_y": float(intrinsics[1, 1]),
        "cx": float(intrinsics[0, 2]),
        "cy": float(intrinsics[1, 2]),
        "w": int(width),
        "h": int(height),
        "camera_model": "PINHOLE",
        "frames": frames,
        "semantic_classes": list(SEMANTIC_CLASSES),
    }
    if "materials" in rendered:
        transforms["materials"] = rendered["materials"]
        transforms["lights"] = rendered["lights"].tolist()
    (scene_dir / "transforms_train.json").write_text(json.dumps(transforms, indent=1))


def _parameters(
    num_scenes: int, num_frames: int, height: int, width: int, seed: int, image_format: str, glossy: bool = False
) -> dict:
    for name, value, low in (("num_scenes", num_scenes, 1), ("num_frames", num_frames, 1), ("height", height, 8), ("width", width, 8)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}.")
    if image_format not in ("png", "jpg"):
        raise ValueError(f"`image_format` must be 'png' or 'jpg', got {image_format!r}.")
    parameters = {
        "format_version": _FORMAT_VERSION,
        "num_scenes": num_scenes,
        "num_frames": num_frames,
        "height": height,
        "width": width,
        "seed": int(seed),
        "image_format": image_format,
    }
    if glossy:  # recorded only when on: matte datasets keep their marker
        parameters["glossy"] = True
    return parameters


def generate_scenes(
    out_dir: str | Path,
    num_scenes: int = 8,
    num_frames: int = 24,
    height: int = 96,
    width: int = 128,
    seed: int = 0,
    progress: bool = True,
    image_format: str = "png",
    overwrite: bool = False,
    glossy: bool = False,
) -> Path:
    """Generate ``num_scenes`` rooms of ``num_frames`` frames into ``out_dir/scenes/``.

    Deterministic in ``seed`` (scene ``i`` depends only on ``(seed, i)``). Written as one set through
    the run folder (:func:`snd_hf.run_folder.replace_folder`): into a temporary folder beside
    ``out_dir`` that replaces it once complete, so an interrupted run never leaves a half-written
    dataset; its manifest ``snd_run.json`` lists every file, and ``snd_synthetic.json`` records the
    parameters. ``glossy`` adds specular highlights and their ground truth (see the module docstring).

    An existing ``out_dir`` is replaced only when it is empty or holds nothing but the files its
    manifest lists (a set the package wrote), or with ``overwrite=True``.

    Returns:
        ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` holds anything else (the first files named), or is a file or a
            symbolic link, and ``overwrite`` is False. Nothing is changed.
    """
    parameters = _parameters(num_scenes, num_frames, height, width, seed, image_format, glossy)
    out_dir = Path(out_dir)

    def build(folder: Path) -> None:
        for scene_index in tqdm(range(num_scenes), desc="synthetic scenes", disable=not progress):
            rendered = render_synthetic_scene(scene_index, num_frames, height, width, seed, glossy)
            _write_scene(rendered, folder / "scenes" / f"synth_{scene_index:04d}", image_format)
        (folder / MARKER_NAME).write_text(json.dumps(parameters, indent=1))

    try:
        return replace_folder(out_dir, build, "snd synth", identity=parameters, overwrite=overwrite)
    except FileExistsError as error:
        raise FileExistsError(f"{error}; or pass overwrite=True (snd synth --overwrite) to replace it") from None


def ensure_synthetic_scenes(out_dir: str | Path, **options) -> Path:
    """Like :func:`generate_scenes` (same keyword arguments), but only when ``out_dir`` lacks a
    complete set made with these parameters (its run manifest's identity, every file it lists present).

    Raises:
        FileExistsError: ``out_dir`` must be (re)generated but holds files the generator did not
            write (a real dataset, say), and ``overwrite`` is not True.
    """
    bound = inspect.signature(generate_scenes).bind(out_dir, **options)
    bound.apply_defaults()
    arguments = bound.arguments
    parameters = _parameters(
        arguments["num_scenes"], arguments["num_frames"], arguments["height"], arguments["width"], arguments["seed"],
        arguments["image_format"], arguments["glossy"],
    )  # fmt: skip
    out_dir = Path(out_dir)
    if out_dir.is_dir() and not out_dir.is_symlink():
        manifest = read_manifest(out_dir)
        if manifest is not None and manifest.get("command") == "snd synth":
            recorded, files = manifest.get("identity"), manifest.get("outputs", [])
        else:  # a set of an earlier version: its marker lists the files
            try:
                recorded = read_json(out_dir / MARKER_NAME)
                files = recorded.pop("files")
            except (OSError, ValueError, KeyError, AttributeError):
                recorded, files = None, []
        if recorded == parameters and isinstance(files, list) and all((out_dir / str(name)).is_file() for name in files):
            return out_dir
    return generate_scenes(**arguments)


def run(args: argparse.Namespace) -> int:
    height, width = args.size
    out = generate_scenes(
        args.out, args.scenes, args.frames, height, width, args.seed, image_format=args.format, glossy=args.glossy,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.scenes} scenes x {args.frames} frames ({height}x{width}) to {out}")
    return 0
