"""Reader for scenes in the ScanNet++ layout used by SnD and FiT3D.

::

    <root>/scenes/<scene id>/
        transforms_train.json            fl_x, fl_y, cx, cy, w, h (pixels),
                                         frames[].file_path, frames[].transform_matrix (OpenGL c2w),
                                         frames[].is_bad (optional)
        images/<file name>               RGB
        instance_segmentation/<file name>.png
        depth/<file stem>.png            optional: 16-bit millimetres, 0 = invalid
        normals/<file stem>.png          optional: 8-bit RGB camera-frame normals
        semantics/<file stem>.png        optional: class ids

A scene is every folder under ``scenes/`` holding ``instance_segmentation/`` (as in the
original). Frames are sorted by the first integer in their file name; ``is_bad`` frames are
dropped unless ``skip_bad=False``. Frames whose image or mask file is missing are dropped when
the scene is listed, and counted in ``skipped`` with their path.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from snd_hf.cameras import normalize_intrinsics, opengl_to_opencv
from snd_hf.data.frames import FrameReadError, decode_view, open_image

OPTIONAL_FIELDS: tuple[str, ...] = ("depth", "normals", "semantics")


@dataclass
class FrameRecord:
    """One posed frame of a scene.

    Attributes:
        name: image file name (the ``file_path`` of ``transforms_train.json`` without folders).
        extrinsics: camera-to-world, OpenCV axes. [4, 4]
        intrinsics: normalised intrinsics. [3, 3]
        is_bad: the scene's ``is_bad`` flag.
        key: reader-specific handle of the frame's data (the row index for ``datasets``).
    """

    name: str
    extrinsics: torch.Tensor
    intrinsics: torch.Tensor
    is_bad: bool = False
    key: object = None


@dataclass
class SceneRecord:
    """A scene: its id, its usable frames in order, and the optional fields it stores."""

    scene_id: str
    frames: list[FrameRecord]
    height: int
    width: int
    fields: tuple[str, ...] = ()
    location: str = ""

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class SkipLog:
    """What a reader skipped: a count per reason and the first 20 paths of each."""

    counts: Counter = field(default_factory=Counter)
    paths: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, path: str, *, warn: bool = True) -> None:
        """Record one skip, with a warning the first time a reason occurs (unless ``warn=False``)."""
        self.counts[reason] += 1
        self.paths.setdefault(reason, [])
        if len(self.paths[reason]) < 20:
            self.paths[reason].append(str(path))
        if warn and self.counts[reason] == 1:
            warnings.warn(f"skipped {path} ({reason}); further skips are counted in `.skipped`", stacklevel=3)


def frame_number(name: str) -> int:
    """The first integer in a file name (frames sort by it, as in the original); -1 if none."""
    match = re.search(r"\d+", name)
    return int(match.group()) if match else -1


def parse_transforms(data: dict, source: str) -> tuple[list[FrameRecord], int, int]:
    """Frames of a ``transforms_train.json`` document, sorted by frame number.

    Returns:
        the frames (OpenCV extrinsics, normalised intrinsics, all of them including ``is_bad``),
        the image height and width.
    """
    try:
        fx, fy, cx, cy = (float(data[key]) for key in ("fl_x", "fl_y", "cx", "cy"))
        height, width = int(data["h"]), int(data["w"])
        entries = data["frames"]
        frames = []
        for entry in entries:
            pose = torch.tensor(entry["transform_matrix"], dtype=torch.float64)
            if pose.shape != (4, 4):
                raise ValueError(f"transform_matrix must be 4x4, got {list(pose.shape)}")
            frames.append((Path(entry["file_path"]).name, pose, bool(entry.get("is_bad", False))))
    except (KeyError, TypeError, ValueError) as error:
        raise FrameReadError(source, f"malformed transforms ({type(error).__name__}: {error})") from None
    pixel = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    intrinsics = normalize_intrinsics(pixel, height, width).float()
    frames.sort(key=lambda frame: (frame_number(frame[0]), frame[0]))
    records = [
        FrameRecord(name=name, extrinsics=opengl_to_opencv(pose).float(), intrinsics=intrinsics, is_bad=is_bad)
        for name, pose, is_bad in frames
    ]
    return records, height, width


def list_scene_dirs(root: str | Path) -> list[Path]:
    """Scene folders under ``root/scenes`` (or ``root`` itself) holding ``instance_segmentation/``."""
    root = Path(root)
    base = root / "scenes" if (root / "scenes").is_dir() else root
    if not base.is_dir():
        raise FileNotFoundError(f"`root` must be a folder with scenes/<id>/ inside, got {str(root)!r}")
    return sorted(path for path in base.iterdir() if (path / "instance_segmentation").is_dir())


class FolderScenes:
    """Scenes of a ScanNet++-layout folder, with per-frame loading.

    Args:
        root: the dataset folder (holding ``scenes/``) or a folder of scene folders.
        skip_bad: drop frames flagged ``is_bad``.
        on_error: ``"skip"`` drops scenes with malformed ``transforms_train.json`` and frames with
            missing files (counted in ``skipped``); ``"raise"`` raises :class:`FrameReadError`.
    """

    def __init__(self, root: str | Path, *, skip_bad: bool = True, on_error: str = "skip"):
        self.root = Path(root)
        self.skipped = SkipLog()
        self.on_error = on_error
        self.scenes: list[SceneRecord] = []
        for scene_dir in list_scene_dirs(root):
            scene = self._read_scene(scene_dir, skip_bad)
            if scene is not None:
                self.scenes.append(scene)

    def _skip(self, error: FrameReadError) -> None:
        if self.on_error == "raise":
            raise error
        self.skipped.add(error.kind, error.path)

    def _read_scene(self, scene_dir: Path, skip_bad: bool) -> SceneRecord | None:
        transforms_path = scene_dir / "transforms_train.json"
        try:
            try:
                data = json.loads(transforms_path.read_text())
            except FileNotFoundError:
                raise FrameReadError(str(transforms_path), "file not found") from None
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise FrameReadError(str(transforms_path), f"invalid JSON ({error})") from None
            frames, height, width = parse_transforms(data, str(transforms_path))
        except FrameReadError as error:
            self._skip(error)
            return None
        images = set(_names(scene_dir / "images"))
        masks = set(_names(scene_dir / "instance_segmentation"))
        kept = []
        # Deviation: the original kept is_bad frames and crashed or retried on missing files;
        # we drop both here, counting them (docs/deviations.md rows "is_bad", "missing files").
        for frame in frames:
            if frame.is_bad and skip_bad:
                self.skipped.add("is_bad frame", str(scene_dir / "images" / frame.name), warn=False)
                continue
            if frame.name not in images:
                self._skip(FrameReadError(str(scene_dir / "images" / frame.name), "file not found"))
                continue
            if f"{frame.name}.png" not in masks:
                self._skip(FrameReadError(str(scene_dir / "instance_segmentation" / f"{frame.name}.png"), "file not found"))
                continue
            kept.append(frame)
        fields = tuple(name for name in OPTIONAL_FIELDS if (scene_dir / name).is_dir())
        return SceneRecord(scene_dir.name, kept, height, width, fields, str(scene_dir))

    def load_view(
        self, scene: SceneRecord, position: int, size: tuple[int, int] | None, fields: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        """Tensors of frame ``position`` of ``scene``: ``image`` [3, H, W], ``mask`` [H, W] and the
        requested optional ``fields`` the scene has (``depth`` [H, W], ``normals`` [3, H, W],
        ``semantics`` [H, W]). Raises :class:`FrameReadError` naming the file on any problem."""
        frame = scene.frames[position]
        scene_dir = Path(scene.location)
        stem = Path(frame.name).stem
        paths = {"image": scene_dir / "images" / frame.name, "mask": scene_dir / "instance_segmentation" / f"{frame.name}.png"}
        paths.update({name: scene_dir / name / f"{stem}.png" for name in fields if name in scene.fields})
        return decode_view({name: (open_image(path), str(path)) for name, path in paths.items()}, size)


def _names(folder: Path) -> list[str]:
    return [entry.name for entry in folder.iterdir()] if folder.is_dir() else []
