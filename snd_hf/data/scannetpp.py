"""Reader for scenes in the ScanNet++ layout used by SnD and FiT3D.

::

    <root>/scenes/<scene id>/
        transforms_train.json            camera_model, fl_x, fl_y, cx, cy, w, h (pixels; nerfstudio
                                         also allows each of them per frame),
                                         frames[].file_path, frames[].transform_matrix (OpenGL c2w),
                                         frames[].is_bad (optional)
        images/<file name>               RGB
        instance_segmentation/<file name>.png
        depth/<file stem>.png            optional: 16-bit millimetres, 0 = invalid
        normals/<file stem>.png          optional: 8-bit RGB camera-frame normals
        semantics/<file stem>.png        optional: class ids

A scene is every folder under ``scenes/`` holding ``instance_segmentation/`` (as in the
original). Frames are sorted by the first integer in their file name; ``is_bad`` frames are
dropped unless ``skip_bad=False``.

**Cameras.** Only undistorted pinhole cameras are read: no ``camera_model``, ``SIMPLE_PINHOLE``,
``PINHOLE``, or a perspective model with lens distortion (``SIMPLE_RADIAL``, ``RADIAL``,
``OPENCV``, ``FULL_OPENCV``) whose distortion coefficients (``k1``-``k6``, ``p1``, ``p2``,
``s1``-``s4``) are all zero. Every other COLMAP or nerfstudio model (fisheye, panoramic,
orthographic) and any non-zero coefficient raises :class:`CameraModelError`, whatever
``on_error`` says, naming the file and the undistorted file to use instead: training on them as
pinholes would teach wrong geometry. A frame's own ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``,
``h`` apply to it; where the document gives the same key too, both must agree (nerfstudio's
parser silently prefers the document's, a reader of the frame the frame's). Normalised
intrinsics divide by the frame's ``w`` and ``h``.

**Frame checks.** A frame is dropped when the scene is listed and counted in ``skipped`` with a
path naming its scene and frame (``on_error="raise"`` raises :class:`FrameReadError` instead)
when: its ``transform_matrix`` is not a finite rigid camera-to-world transform; its intrinsics
are not finite, positive focal lengths with the principal point on the image; its
``file_path`` is neither a plain file name nor ``images/<file name>`` (the nerfstudio form,
relative to the scene folder); its image or mask is missing; or a scene folder, image, mask or
map resolves (through symbolic links) outside the dataset root, unless
``allow_outside_root=True``. When a frame is loaded, its image must have the declared ``w`` x
``h`` (:func:`decode_frame`).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from snd_hf.cameras import normalize_intrinsics, opengl_to_opencv
from snd_hf.data.frames import FrameReadError, decode_view, open_image
from snd_hf.schema import SchemaError, read_json

OPTIONAL_FIELDS: tuple[str, ...] = ("depth", "normals", "semantics")

# COLMAP and nerfstudio camera models, by what reading them as a pinhole means.
PINHOLE_MODELS: tuple[str, ...] = ("SIMPLE_PINHOLE", "PINHOLE")
DISTORTED_PERSPECTIVE_MODELS: tuple[str, ...] = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")
NON_PINHOLE_MODELS: tuple[str, ...] = (
    "OPENCV_FISHEYE", "FOV", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "THIN_PRISM_FISHEYE",
    "RAD_TAN_THIN_PRISM_FISHEYE", "FISHEYE624", "EQUIRECTANGULAR", "OMNIDIRECTIONALSTEREO_L",
    "OMNIDIRECTIONALSTEREO_R", "VR180_L", "VR180_R", "ORTHOPHOTO",
)  # fmt: skip
DISTORTION_KEYS: tuple[str, ...] = ("k1", "k2", "k3", "k4", "k5", "k6", "p1", "p2", "s1", "s2", "s3", "s4")
CAMERA_KEYS: tuple[str, ...] = ("fl_x", "fl_y", "cx", "cy", "w", "h")

# How far a pose's rotation part may be from orthonormal (|R^T R - I|, |det R - 1|): well above
# float32 rounding of stored poses, well below any scale or shear that would change geometry.
RIGID_TOLERANCE = 1e-3

_UNDISTORTED_HINT = (
    "snd-hf reads undistorted pinhole cameras only: for ScanNet++ DSLR data use "
    "dslr/nerfstudio/transforms_undistorted.json with its undistorted images (written by the ScanNet++ "
    "toolkit's `python -m dslr.undistort_dslr`), otherwise undistort the images (e.g. COLMAP's "
    "image_undistorter) and write a PINHOLE transforms file"
)


class CameraModelError(ValueError):
    """A transforms file describes a camera that is not an undistorted pinhole; never skipped."""


@dataclass
class FrameRecord:
    """One posed frame of a scene.

    Attributes:
        name: image file name (in the scene's ``images/`` folder).
        extrinsics: camera-to-world, OpenCV axes. [4, 4]
        intrinsics: normalised intrinsics. [3, 3]
        is_bad: the scene's ``is_bad`` flag.
        key: reader-specific handle of the frame's data (the row index for ``datasets``).
        height, width: the image size in pixels the intrinsics were given for.
    """

    name: str
    extrinsics: torch.Tensor
    intrinsics: torch.Tensor
    is_bad: bool = False
    key: object = None
    height: int = 0
    width: int = 0


@dataclass
class SceneRecord:
    """A scene: its id, its usable frames in order, and the optional fields it stores."""

    scene_id: str
    frames: list[FrameRecord]
    fields: tuple[str, ...] = ()
    location: str = ""

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def height(self) -> int:
        """Image height in pixels shared by every frame (ValueError if the frames differ)."""
        return self._size()[0]

    @property
    def width(self) -> int:
        """Image width in pixels shared by every frame (ValueError if the frames differ)."""
        return self._size()[1]

    def _size(self) -> tuple[int, int]:
        sizes = {(frame.height, frame.width) for frame in self.frames}
        if len(sizes) != 1:
            raise ValueError(f"scene {self.scene_id!r} has no single image size ({sorted(sizes)}); read each frame's height/width.")
        return sizes.pop()


@dataclass
class SkipLog:
    """What a reader skipped: a count per reason and the first 20 paths of each; ``warn=False``
    keeps it silent (for callers that report a summary themselves)."""

    counts: Counter = field(default_factory=Counter)
    paths: dict[str, list[str]] = field(default_factory=dict)
    warn: bool = True

    def add(self, reason: str, path: str, *, warn: bool = True) -> None:
        """Record one skip, with a warning the first time a reason occurs (unless ``warn=False``)."""
        self.counts[reason] += 1
        self.paths.setdefault(reason, [])
        if len(self.paths[reason]) < 20:
            self.paths[reason].append(str(path))
        if warn and self.warn and self.counts[reason] == 1:
            warnings.warn(f"skipped {path} ({reason}); further skips are counted in `.skipped`", stacklevel=3)


def frame_number(name: str) -> int:
    """The first integer in a file name (frames sort by it, as in the original); -1 if none."""
    match = re.search(r"\d+", name)
    return int(match.group()) if match else -1


def camera_problem(c2w, intrinsics, height: int, width: int) -> str | None:
    """Why a camera cannot be used, or None when it can: :func:`pose_problem`, then
    :func:`intrinsics_problem`.

    Args:
        c2w: camera-to-world (OpenGL or OpenCV axes: both must be rigid), a tensor or array. [4, 4]
        intrinsics: pixel intrinsics of a ``height x width`` image, a tensor or array. [3, 3]
    """
    return pose_problem(c2w) or intrinsics_problem(intrinsics, height, width)


# Plain Python arithmetic in these checks: listing a large dataset checks every frame, and the
# per-call overhead of torch (and numpy) on 4x4 matrices made listing several times slower.


def pose_problem(c2w) -> str | None:
    """Why ``c2w`` [4, 4] (tensor, array or nested list) is not a finite rigid transform (the first
    problem, in words), or None."""
    rows = np.asarray(c2w, dtype=np.float64).tolist()
    if not all(math.isfinite(value) for row in rows for value in row):
        return "transform_matrix holds NaN or inf"
    if max(abs(a - b) for a, b in zip(rows[3], (0.0, 0.0, 0.0, 1.0))) > RIGID_TOLERANCE:
        return f"transform_matrix's last row must be [0, 0, 0, 1], got {rows[3]}"
    columns = [[rows[i][j] for i in range(3)] for j in range(3)]
    orthogonality = max(
        abs(sum(a * b for a, b in zip(columns[i], columns[j])) - (i == j)) for i in range(3) for j in range(3)
    )
    (a, b, c), (d, e, f), (g, h, k) = (rows[i][:3] for i in range(3))
    determinant = a * (e * k - f * h) - b * (d * k - f * g) + c * (d * h - e * g)
    if orthogonality > RIGID_TOLERANCE or abs(determinant - 1.0) > RIGID_TOLERANCE:
        return f"transform_matrix's rotation is not a rotation (|R^T R - I| = {orthogonality:.3g}, det R = {determinant:.3g})"
    return None


def intrinsics_problem(intrinsics, height: int, width: int) -> str | None:
    """Why pixel ``intrinsics`` [3, 3] of a ``height x width`` image are unusable, or None."""
    if not (isinstance(height, int) and isinstance(width, int) and height >= 1 and width >= 1):
        return f"image size w x h must be positive integers, got {width!r} x {height!r}"
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    if not np.isfinite(intrinsics).all():
        return "intrinsics hold NaN or inf"
    fx, fy, cx, cy = (float(value) for value in (intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]))
    if not (fx > 0 and fy > 0):
        return f"focal lengths fl_x, fl_y must be > 0, got {fx:g}, {fy:g}"
    if not (0 <= cx <= width and 0 <= cy <= height):
        return f"principal point cx, cy must lie on the {width}x{height} image, got {cx:g}, {cy:g}"
    if intrinsics[1, 0] != 0 or (intrinsics[2] != (0.0, 0.0, 1.0)).any():
        return f"intrinsics must be upper triangular with last row [0, 0, 1], got {intrinsics.tolist()}"
    return None


def check_camera_model(entry: dict, source: str) -> None:
    """Raise :class:`CameraModelError` unless ``entry`` (a transforms document, or a frame merged
    over it) describes an undistorted pinhole camera (module docstring)."""
    # Deviation: the original ignored the camera model and distortion (docs/deviations.md row
    # "camera models and intrinsics"); a fisheye read as a pinhole teaches wrong geometry.
    model = entry.get("camera_model")
    coefficients = {key: entry[key] for key in DISTORTION_KEYS if key in entry}
    nonzero = {}
    for key, value in coefficients.items():
        try:
            if float(value) != 0.0:
                nonzero[key] = value
        except (TypeError, ValueError):
            nonzero[key] = value  # not a number: cannot be shown to be zero
    if model is None or model in PINHOLE_MODELS or model in DISTORTED_PERSPECTIVE_MODELS:
        if not nonzero:
            return
        kind = f"camera_model {model!r} with" if model is not None else "a camera with"
        described = f"{kind} lens distortion ({', '.join(f'{k}={v}' for k, v in nonzero.items())})"
    elif model in NON_PINHOLE_MODELS:
        described = f"camera_model {model!r}, not a pinhole projection"
    else:
        described = f"unknown camera_model {model!r}"
    raise CameraModelError(f"{source}: {described}; {_UNDISTORTED_HINT}.")


def image_name(file_path: object) -> str:
    """The file name in ``images/`` that a frame's ``file_path`` names.

    Accepts a plain file name or ``images/<file name>`` (nerfstudio's form, relative to the
    scene folder). Raises ValueError for anything else (other folders, ``..``, absolute paths):
    reading such a path from ``images/`` would silently load another file.
    """
    # Deviation: the original joined file_path to images/ as written (docs/deviations.md row "file paths").
    if not isinstance(file_path, str) or not file_path:
        raise ValueError(f"file_path must be a non-empty string, got {file_path!r}")
    parts = [part for part in file_path.replace("\\", "/").split("/") if part not in ("", ".")]
    if file_path[0] not in "/\\" and ".." not in parts and (len(parts) == 1 or (len(parts) == 2 and parts[0] == "images")):
        return parts[-1]
    raise ValueError(f"file_path {file_path!r} must be a file name in images/ or images/<file name>")


def parse_transforms(data: dict, source: str) -> tuple[list[FrameRecord], list[FrameReadError]]:
    """Frames of a ``transforms_train.json`` document, sorted by frame number.

    Args:
        data: the parsed document.
        source: its path (errors name it; frame errors name ``<its folder>/images/<file name>``).

    Returns:
        the usable frames (OpenCV extrinsics, normalised intrinsics, ``is_bad`` ones included)
        and one :class:`FrameReadError` per rejected frame (module docstring, "Frame checks").

    Raises:
        FrameReadError: the document itself is malformed (no frame list, a camera key missing
            from the document and every frame).
        CameraModelError: a distorted or non-pinhole camera.
    """
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise FrameReadError(source, "malformed transforms (no 'frames' list)")
    entries = data["frames"]
    for key in CAMERA_KEYS:
        if key not in data and not any(isinstance(entry, dict) and key in entry for entry in entries):
            raise FrameReadError(source, f"malformed transforms (KeyError: {key!r} in neither the document nor its frames)")
    check_camera_model(data, source)
    images = Path(source).parent / "images"
    frames, rejected, intrinsics_cache = [], [], {}
    for index, entry in enumerate(entries):
        try:
            frames.append(_parse_frame(data, entry, index, source, images, intrinsics_cache))
        except FrameReadError as error:
            rejected.append(error)
    frames.sort(key=lambda frame: (frame_number(frame.name), frame.name))
    return frames, rejected


def _parse_frame(data: dict, entry: object, index: int, source: str, images: Path, intrinsics_cache: dict) -> FrameRecord:
    where = f"{source} frames[{index}]"
    if not isinstance(entry, dict):
        raise FrameReadError(where, f"malformed frame (an object is needed, got {type(entry).__name__})")
    try:
        name = image_name(entry.get("file_path"))
    except ValueError as error:
        raise FrameReadError(where, f"unsupported file_path ({error})") from None
    where = f"{images}/{name}"
    check_camera_model({**data, **entry}, f"{source} (frame {name})")
    # Deviation: the original used the document's intrinsics for every frame and accepted any
    # value (docs/deviations.md rows "camera models and intrinsics", "invalid camera values").
    values = {}
    for key in CAMERA_KEYS:
        if key in entry and key in data and entry[key] != data[key]:
            raise FrameReadError(where, f"conflicting camera ({key} is {entry[key]!r} in the frame, {data[key]!r} in the document)")
        value = entry.get(key, data.get(key))
        if value is None:
            raise FrameReadError(where, f"malformed transforms (KeyError: {key!r} in neither the frame nor the document)")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise FrameReadError(where, f"malformed transforms ({key} must be a number, got {value!r})")
        values[key] = value
    height, width = values["h"], values["w"]
    if not (math.isfinite(height) and math.isfinite(width) and height == int(height) and width == int(width)):
        raise FrameReadError(where, f"invalid camera (image size w x h must be integers, got {width!r} x {height!r})")
    height, width = int(height), int(width)
    try:
        pose = np.array(entry["transform_matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as error:
        raise FrameReadError(where, f"malformed transforms (transform_matrix: {type(error).__name__}: {error})") from None
    if pose.shape != (4, 4):
        raise FrameReadError(where, f"malformed transforms (transform_matrix must be 4x4, got {list(pose.shape)})")
    # Frames usually share one camera: its matrix (and its check) is made once.
    camera = (values["fl_x"], values["fl_y"], values["cx"], values["cy"], height, width)
    if camera not in intrinsics_cache:
        pixel = np.array([[camera[0], 0.0, camera[2]], [0.0, camera[1], camera[3]], [0.0, 0.0, 1.0]])
        problem = intrinsics_problem(pixel, height, width)
        normalised = None if problem else normalize_intrinsics(torch.from_numpy(pixel), height, width).float()
        intrinsics_cache[camera] = (problem, normalised)
    problem, intrinsics = intrinsics_cache[camera]
    problem = pose_problem(pose) or problem
    if problem is not None:
        raise FrameReadError(where, f"invalid camera ({problem})")
    return FrameRecord(
        name=name,
        extrinsics=opengl_to_opencv(torch.from_numpy(pose)).float(),
        intrinsics=intrinsics,
        is_bad=bool(entry.get("is_bad", False)),
        height=height,
        width=width,
    )


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
        on_error: ``"skip"`` drops scenes with malformed ``transforms_train.json`` and frames
            failing the checks of the module docstring, counting each in ``skipped``;
            ``"raise"`` raises :class:`FrameReadError` naming the file.
        allow_outside_root: read scene folders and files whose real path (symbolic links
            resolved) lies outside ``root``; refused by default, so that a dataset received from
            someone else cannot make the reader (or :func:`~snd_hf.data.hf.scenes_to_hf`) read
            other files of the machine.
        warn: warn the first time each reason is skipped.

    Raises:
        CameraModelError: a scene's camera is distorted or not a pinhole (module docstring).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        skip_bad: bool = True,
        on_error: str = "skip",
        allow_outside_root: bool = False,
        warn: bool = True,
    ):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"`on_error` must be 'skip' or 'raise', got {on_error!r}.")
        self.root = Path(root)
        self.real_root = self.root.resolve()
        self.allow_outside_root = allow_outside_root
        self.skipped = SkipLog(warn=warn)
        self.on_error = on_error
        self.scenes: list[SceneRecord] = []
        for scene_dir in list_scene_dirs(root):
            scene = self._read_scene(scene_dir, skip_bad)
            if scene is not None:
                self.scenes.append(scene)

    def skip(self, error: FrameReadError) -> None:
        """Count ``error`` in ``skipped``, or raise it with ``on_error="raise"``."""
        if self.on_error == "raise":
            raise error
        self.skipped.add(error.kind, error.path)

    def inside(self, path: Path) -> Path:
        """``path`` itself once checked to resolve inside the root (``allow_outside_root`` aside).

        Raises:
            FrameReadError: naming ``path`` and where it leads.
        """
        # Deviation: the original followed any link (docs/deviations.md row "file paths").
        if not self.allow_outside_root:
            resolved = path.resolve()
            if not resolved.is_relative_to(self.real_root):
                raise FrameReadError(
                    str(path), f"outside the dataset root (resolves to {resolved}; pass allow_outside_root=True to read it)"
                )
        return path

    def _read_scene(self, scene_dir: Path, skip_bad: bool) -> SceneRecord | None:
        transforms_path = scene_dir / "transforms_train.json"
        try:
            self.inside(scene_dir)
            self.inside(transforms_path)
            try:
                data = read_json(transforms_path)
            except FileNotFoundError:
                raise FrameReadError(str(transforms_path), "file not found") from None
            except SchemaError as error:  # not JSON, too large or too deep
                detail = str(error).removeprefix(f"{transforms_path}: ")
                raise FrameReadError(str(transforms_path), f"invalid JSON ({detail})") from None
            frames, rejected = parse_transforms(data, str(transforms_path))
            images = self._listing(scene_dir / "images")
            masks = self._listing(scene_dir / "instance_segmentation")
        except FrameReadError as error:
            self.skip(error)
            return None
        for error in rejected:
            self.skip(error)
        kept = []
        # Deviation: the original kept is_bad frames and crashed or retried on missing files;
        # we drop both here, counting them (docs/deviations.md rows "is_bad", "missing files").
        for frame in frames:
            if frame.is_bad and skip_bad:
                self.skipped.add("is_bad frame", str(scene_dir / "images" / frame.name), warn=False)
                continue
            image, mask = scene_dir / "images" / frame.name, scene_dir / "instance_segmentation" / f"{frame.name}.png"
            try:
                for path, listing in ((image, images), (mask, masks)):
                    if path.name not in listing:
                        raise FrameReadError(str(path), "file not found")
                    if listing[path.name]:  # a symbolic link: where does it lead?
                        self.inside(path)
            except FrameReadError as error:
                self.skip(error)
                continue
            kept.append(frame)
        fields = tuple(name for name in OPTIONAL_FIELDS if (scene_dir / name).is_dir())
        return SceneRecord(scene_dir.name, kept, fields, str(scene_dir))

    def _listing(self, folder: Path) -> dict[str, bool]:
        """Entries of ``folder`` (checked to lie inside the root) -> whether each is a symbolic link;
        empty when the folder is absent."""
        if not folder.is_dir():
            return {}
        self.inside(folder)
        with os.scandir(folder) as entries:
            return {entry.name: entry.is_symlink() for entry in entries}

    def frame_paths(self, scene: SceneRecord, position: int, fields: tuple[str, ...]) -> dict[str, Path]:
        """Files of frame ``position`` of ``scene``: ``image``, ``mask`` and those of ``fields``
        the scene has, each checked to lie inside the root. Raises :class:`FrameReadError`."""
        frame = scene.frames[position]
        scene_dir = Path(scene.location)
        stem = Path(frame.name).stem
        paths = {"image": scene_dir / "images" / frame.name, "mask": scene_dir / "instance_segmentation" / f"{frame.name}.png"}
        paths.update({name: scene_dir / name / f"{stem}.png" for name in fields if name in scene.fields})
        return {name: self.inside(path) for name, path in paths.items()}

    def load_view(
        self, scene: SceneRecord, position: int, size: tuple[int, int] | None, fields: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        """Tensors of frame ``position`` of ``scene``: ``image`` [3, H, W], ``mask`` [H, W] and the
        requested optional ``fields`` the scene has (``depth`` [H, W], ``normals`` [3, H, W],
        ``semantics`` [H, W]). Raises :class:`FrameReadError` naming the file on any problem."""
        paths = self.frame_paths(scene, position, fields)
        return decode_frame(scene.frames[position], {name: (open_image(path), str(path)) for name, path in paths.items()}, size)


def decode_frame(
    frame: FrameRecord, files: dict[str, tuple[Image.Image, str]], size: tuple[int, int] | None
) -> dict[str, torch.Tensor]:
    """:func:`~snd_hf.data.frames.decode_view` of ``frame``'s opened files, once the image is
    checked to have the size (``frame.height`` x ``frame.width``) its camera was given for.

    Normalised intrinsics divide by the declared ``w``, ``h``; a file of another size is either a
    resize (harmless) or a crop or a file whose focal length was rescaled (wrong geometry), and
    the two cannot be told apart, so it is refused rather than guessed.

    Raises:
        FrameReadError: naming the file.
    """
    image, source = files["image"]
    if (image.height, image.width) != (frame.height, frame.width):
        raise FrameReadError(
            source,
            f"image size differs from the camera's (w x h is {frame.width}x{frame.height} in the transforms, "
            f"the file is {image.width}x{image.height}; resize the file or correct w, h and the intrinsics)",
        )
    return decode_view(files, size)
