"""The posed views a feature field is fitted to, and the cameras it renders into.

A :class:`FieldScene` holds every view of one scene in memory (a field is fitted per scene):
images, cameras in the snd-hf conventions (:mod:`snd_hf.cameras`: c2w OpenCV, intrinsics
normalised by W/H, z-depth), and the optional per-view maps the fitting and the evaluation read:
depth (to initialise the Gaussians), instance ids, and for generated glossy scenes the specular
ground truth. It loads from a ScanNet++-layout scene folder (:func:`load_scene`, the layout
:mod:`snd_hf.data.synthetic` writes, ``--glossy`` adding ``specular/`` and ``highlights/``) or
from the arrays of :func:`snd_hf.data.synthetic.render_synthetic_scene` (:func:`scene_from_arrays`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from snd_hf.cameras import Cameras, normalize_intrinsics
from snd_hf.data.frames import FrameReadError, decode_labels, decode_view, open_image
from snd_hf.data.scannetpp import parse_transforms
from snd_hf.schema import read_json

DEFAULT_NEAR = 0.1  # metres; the scene readers' defaults
DEFAULT_FAR = 20.0


@dataclass
class FieldScene:
    """Every view of one scene, in memory.

    Attributes:
        images: RGB in [0, 1]. [V, 3, H, W]
        cameras: the views' cameras (``image_size`` = (H, W)).
        names: one name per view (the image file name when read from a folder).
        depth: z-depth, scene units, 0 = invalid; None when the scene stores none. [V, H, W]
        instances: instance ids (one per object, walls and floor included), or None. [V, H, W]
        specular: ground-truth specular radiance added to the image (glossy generated scenes). [V, H, W]
        highlights: ground-truth highlight masks (``specular`` above the generator's threshold). [V, H, W]
        glossy_instances: ids of the objects with a specular material (glossy generated scenes).
        location: where the scene was read from ("" for arrays).
    """

    images: torch.Tensor
    cameras: Cameras
    names: list[str]
    depth: torch.Tensor | None = None
    instances: torch.Tensor | None = None
    specular: torch.Tensor | None = None
    highlights: torch.Tensor | None = None
    glossy_instances: tuple[int, ...] = ()
    location: str = ""

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"FieldScene.images must have shape [V, 3, H, W], got {list(self.images.shape)}.")
        views, _, height, width = self.images.shape
        if len(self.cameras) != views or self.cameras.image_size != (height, width):
            raise ValueError(
                f"FieldScene.cameras must describe {views} views of {height}x{width}, got {len(self.cameras)} views of "
                f"{self.cameras.image_size[0]}x{self.cameras.image_size[1]}."
            )
        if len(self.names) != views:
            raise ValueError(f"FieldScene.names must have {views} entries, got {len(self.names)}.")
        for name in ("depth", "instances", "specular", "highlights"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (views, height, width):
                raise ValueError(f"FieldScene.{name} must have shape {[views, height, width]}, got {list(value.shape)}.")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.cameras.image_size

    def subset(self, views: list[int] | torch.Tensor) -> FieldScene:
        """The scene restricted to ``views`` (positions), in that order."""
        views = torch.as_tensor(views, dtype=torch.long)
        if views.numel() and (views.min() < 0 or views.max() >= len(self)):
            raise ValueError(f"`views` must be positions in [0, {len(self)}), got {views.tolist()}.")
        index = views.tolist()
        maps = {
            item.name: getattr(self, item.name)[views]
            for item in fields(self)
            if item.name in ("images", "depth", "instances", "specular", "highlights") and getattr(self, item.name) is not None
        }
        return replace(self, cameras=self.cameras[index], names=[self.names[i] for i in index], **maps)


def load_scene(
    path: str | Path, size: tuple[int, int] | None = None, near: float = DEFAULT_NEAR, far: float = DEFAULT_FAR
) -> FieldScene:
    """Read every frame of one ScanNet++-layout scene folder (``transforms_train.json``, ``images/``...).

    Frames flagged ``is_bad`` are kept out; ``depth/``, ``instance_segmentation/``, ``specular/``
    and ``highlights/`` are read when the folder has them.

    Args:
        path: the scene folder (the one holding ``transforms_train.json``).
        size: ``(H, W)`` to resize to (images bicubic, maps nearest), or None for the native size.
        near, far: clipping z-depths given to every view, scene units.

    Raises:
        FileNotFoundError: the folder or its ``transforms_train.json`` is missing.
        ValueError: a file is unreadable or malformed (naming it), or the scene has no usable frame.
    """
    path = Path(path)
    transforms_path = path / "transforms_train.json"
    if not transforms_path.is_file():
        raise FileNotFoundError(f"{transforms_path} not found: SCENE_DIR must be a scene folder in the ScanNet++ layout")
    data = read_json(transforms_path)
    try:
        frames, rejected = parse_transforms(data, str(transforms_path))
    except FrameReadError as error:
        raise ValueError(str(error)) from None
    for error in rejected:  # the scene readers' frame checks: invalid cameras, unsupported file paths
        warnings.warn(f"frame left out: {error}", stacklevel=2)
    frames = [frame for frame in frames if not frame.is_bad]
    if not frames:
        raise ValueError(f"{transforms_path} lists no usable frame")

    views = []
    for frame in frames:
        stem = Path(frame.name).stem
        paths = {
            "image": path / "images" / frame.name,
            "mask": path / "instance_segmentation" / f"{frame.name}.png",
            "depth": path / "depth" / f"{stem}.png",
        }
        paths = {name: file for name, file in paths.items() if name == "image" or file.is_file()}
        try:
            view = decode_view({name: (open_image(file), str(file)) for name, file in paths.items()}, size)
            for name, folder in (("specular", "specular"), ("highlights", "highlights")):
                file = path / folder / f"{stem}.png"
                if file.is_file():
                    view[name] = _decode_gloss_map(file, name, size, (frame.height, frame.width))
        except FrameReadError as error:
            raise ValueError(str(error)) from None
        views.append(view)

    def stacked(name: str) -> torch.Tensor | None:
        present = [name in view for view in views]
        if not all(present):
            return None  # a map missing from some frames is not used at all
        return torch.stack([view[name] for view in views])

    images = torch.stack([view["image"] for view in views])
    cameras = Cameras(
        extrinsics=torch.stack([frame.extrinsics for frame in frames]),
        intrinsics=torch.stack([frame.intrinsics for frame in frames]),
        near=torch.full((len(frames),), float(near)),
        far=torch.full((len(frames),), float(far)),
        image_size=tuple(images.shape[-2:]),
    )
    glossy = tuple(int(material["instance"]) for material in data.get("materials", []))
    return FieldScene(
        images=images,
        cameras=cameras,
        names=[frame.name for frame in frames],
        depth=stacked("depth"),
        instances=stacked("mask"),
        specular=stacked("specular"),
        highlights=stacked("highlights"),
        glossy_instances=glossy,
        location=str(path),
    )


def _decode_gloss_map(file: Path, name: str, size: tuple[int, int] | None, native: tuple[int, int]) -> torch.Tensor:
    """``specular/`` (16-bit, value / 65535) or ``highlights/`` (8-bit, > 127) → [H, W], nearest resize."""
    values = decode_labels(open_image(file), size, str(file), native)  # integer map, checked and resized
    return values.float() / 65535.0 if name == "specular" else values > 127


def scene_from_arrays(rendered: dict, near: float = DEFAULT_NEAR, far: float = DEFAULT_FAR) -> FieldScene:
    """A scene from :func:`snd_hf.data.synthetic.render_synthetic_scene`'s arrays (no files).

    Args:
        rendered: ``image`` [V, H, W, 3], ``extrinsics`` [V, 4, 4], ``intrinsics`` [3, 3] in pixels,
            ``depth`` / ``instance`` [V, H, W], and optionally ``specular`` / ``highlight`` [V, H, W]
            and ``materials``.
        near, far: clipping z-depths given to every view.
    """
    images = torch.from_numpy(np.ascontiguousarray(rendered["image"].transpose(0, 3, 1, 2))).float()
    views, _, height, width = images.shape
    intrinsics = normalize_intrinsics(torch.as_tensor(rendered["intrinsics"], dtype=torch.float64), height, width)

    def optional(name: str, dtype: torch.dtype) -> torch.Tensor | None:
        return torch.as_tensor(rendered[name]).to(dtype) if name in rendered else None

    cameras = Cameras(
        extrinsics=torch.as_tensor(rendered["extrinsics"]).float(),
        intrinsics=intrinsics.float().expand(views, 3, 3).clone(),
        near=torch.full((views,), float(near)),
        far=torch.full((views,), float(far)),
        image_size=(height, width),
    )
    return FieldScene(
        images=images,
        cameras=cameras,
        names=[f"frame_{index:06d}" for index in range(views)],
        depth=optional("depth", torch.float32),
        instances=optional("instance", torch.long),
        specular=optional("specular", torch.float32),
        highlights=optional("highlight", torch.bool),
        glossy_instances=tuple(int(material["instance"]) for material in rendered.get("materials", [])),
    )
