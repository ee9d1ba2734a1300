"""Readers of the standard probing datasets, in the layouts their reference code expects.

Each dense reader is a ``torch.utils.data.Dataset`` of ``DenseSample`` (image in [0, 1] plus
whichever of depth / normals / labels the dataset has) and carries its evaluation settings
(``max_depth``, ``crop``, ``num_classes``). ``ScanNetPairs`` yields ``ViewPair`` for the
correspondence task.

Layouts (paths relative to the dataset root):

- ``NYUv2Probe3D``: Probe3D's packing. Test: one pickle with ``images`` [N, 3, H, W] uint8,
  ``depths`` [N, H, W] metres, ``snorms`` [N, 3, H, W], ``test_indices``. Train: a folder of GeoNet
  ``.mat`` files (``img`` mean-shifted, ``depth``, ``norm``), sorted, every 20th held out as valid.
- ``ScanNetPairs``: the ScanNet test-1500 bundle: ``test.npz`` (``name`` rows: room, sequence,
  frame 0, frame 1), ``intrinsics.npz`` (scene id → 3x3 pixel K of the colour image),
  ``<scene>/color/<frame>.jpg``, ``<scene>/depth/<frame>.png`` (mm), ``<scene>/pose/<frame>.txt``
  (camera-to-world).
- ``SplitFileDepth``: FiT3D's ScanNet++ / mmseg-depth KITTI / NYU split files, one sample per
  line ``<image> <depth png> [focal]`` (``None`` depth lines skipped), depth png divided by
  ``depth_scale`` (1000 for ScanNet++/NYU, 256 for KITTI). ``scannetpp_depth`` and
  ``kitti_eigen`` give the published settings (max 20 m, none; max 80 m, Garg crop).
- ``MMSegFolders``: mmseg's ``images/<split>`` + ``annotations/<split>`` pairs matched by stem.
  ``ade20k`` (150 classes, label 0 is "other" → ignored, the rest shift down by one).
- ``PascalVOC``: ``JPEGImages``, ``SegmentationClass`` (palette PNG, 255 = boundary) and
  ``ImageSets/Segmentation/<split>.txt``; 21 classes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from snd_hf.cameras import normalize_intrinsics
from snd_hf.data.correspondence import relative_rotation_deg
from snd_hf.files import load_data_pickle
from snd_hf.images import load_rgb, open_image, rgb_to_float

__all__ = [
    "TASKS",
    "DenseSample",
    "EvalData",
    "DenseDataset",
    "MMSegFolders",
    "NYUv2Probe3D",
    "PascalVOC",
    "ScanNetPairs",
    "SplitFileDepth",
    "ViewPair",
    "ade20k",
    "kitti_eigen",
    "scannetpp_depth",
]

IGNORE_INDEX = 255


@dataclass
class DenseSample:
    """One image with its dense ground truth.

    Attributes:
        image: RGB in [0, 1]. [3, H, W]
        depth: z-depth in metres, 0 where missing. [H, W]
        normals: camera-frame unit normals (OpenCV axes), 0 where missing. [3, H, W]
        labels: class ids, ``IGNORE_INDEX`` where unlabelled. [H, W]
    """

    image: torch.Tensor
    depth: torch.Tensor | None = None
    normals: torch.Tensor | None = None
    labels: torch.Tensor | None = None


@dataclass
class ViewPair:
    """Two posed views of one scene for the correspondence task.

    Attributes:
        images: RGB in [0, 1]. [2, 3, H, W]
        depths: z-depth in metres, 0 where missing. [2, H_d, W_d]
        extrinsics: camera-to-world, OpenCV. [2, 4, 4]
        intrinsics: normalised intrinsics. [2, 3, 3]
        rotation_deg: relative rotation between the two cameras.
    """

    images: torch.Tensor
    depths: torch.Tensor
    extrinsics: torch.Tensor
    intrinsics: torch.Tensor
    rotation_deg: float


class DenseDataset(Dataset):
    """Base of the dense readers: a name and the evaluation settings of the dataset."""

    name: str = "dense"
    min_depth: float = 1e-3
    max_depth: float = 10.0
    crop: Literal["eigen", "garg"] | None = None
    num_classes: int | None = None


def _read_rgb(path: str | os.PathLike) -> torch.Tensor:
    """Image file → RGB float [3, H, W] in [0, 1] (:mod:`snd_hf.images`; not EXIF-rotated: the
    labels refer to the stored pixel grid)."""
    array = rgb_to_float(load_rgb(path, orient=False))
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _read_png(path: str | os.PathLike) -> np.ndarray:
    """A label or depth map as stored (its own mode and bit depth), decoded within the pixel cap."""
    return np.asarray(open_image(path, orient=False))


def _read_depth_png(path: str | os.PathLike, depth_scale: float) -> torch.Tensor:
    """16-bit depth PNG → float metres [H, W] (0 stays 0 = missing)."""
    return torch.from_numpy(_read_png(path).astype(np.float32) / depth_scale)


def _check_root(root: str | os.PathLike, argument: str = "root") -> Path:
    path = Path(root)
    if not path.exists():
        raise ValueError(f"`{argument}` must be an existing path, got {str(path)!r}")
    return path


class NYUv2Probe3D(DenseDataset):
    """NYUv2 depth and surface normals as Probe3D packs them (see the module docstring).

    Args:
        root: folder holding ``test_pickle`` and the ``train_folder`` of GeoNet ``.mat`` files.
        split: ``"train"``, ``"valid"``, ``"trainval"`` (GeoNet) or ``"test"`` (labelled pickle).
        test_pickle: file name of the labelled test pickle.
        train_folder: folder name of the GeoNet files.
    """

    name = "nyuv2"
    max_depth = 10.0
    # GeoNet stores images with twice the per-channel mean subtracted.
    _GEONET_SHIFT = np.array([122.175, 116.169, 103.508], dtype=np.float32) * 2.0

    def __init__(
        self,
        root: str | os.PathLike,
        split: Literal["train", "valid", "trainval", "test"] = "test",
        test_pickle: str = "nyuv2_test.pkl",
        train_folder: str = "nyuv2_geonet",
    ):
        self.root = _check_root(root)
        self.split = split
        if split == "test":
            packed = load_data_pickle(self.root / test_pickle)  # read without running code from the file
            self.indices = [int(index) for index in np.asarray(packed["test_indices"]).reshape(-1)]
            self._packed = packed
        elif split in ("train", "valid", "trainval"):
            # Deviation: Probe3D also deletes listing positions 21181 and 6919 (broken files); we keep
            # the listing as is and expect broken files to be removed from the folder (docs/deviations.md, 16).
            files = sorted(os.listdir(self.root / train_folder))
            if split != "trainval":
                files = [name for i, name in enumerate(files) if (i % 20 == 0) == (split == "valid")]
            self.files = [self.root / train_folder / name for name in files]
        else:
            raise ValueError(f"split must be 'train', 'valid', 'trainval' or 'test', got {split!r}")

    def __len__(self) -> int:
        return len(self.indices) if self.split == "test" else len(self.files)

    def __getitem__(self, index: int) -> DenseSample:
        if self.split == "test":
            item = self.indices[index]
            image = np.asarray(self._packed["images"][item], dtype=np.float32) / 255.0  # [3, H, W]
            depth = np.array(self._packed["depths"][item], dtype=np.float32)
            normals = np.asarray(self._packed["snorms"][item], dtype=np.float32)  # [3, H, W]
        else:
            from scipy.io import loadmat

            record = loadmat(self.files[index])
            image = (np.asarray(record["img"], dtype=np.float32)[:480, :640] + self._GEONET_SHIFT).clip(0, 255)
            image = np.floor(image).transpose(2, 0, 1) / 255.0
            depth = np.array(record["depth"], dtype=np.float32)[:480, :640]
            normals = np.asarray(record["norm"], dtype=np.float32)[:480, :640].transpose(2, 0, 1)
        depth[depth > self.max_depth] = 0.0
        return DenseSample(
            image=torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            depth=torch.from_numpy(depth),
            normals=torch.from_numpy(np.ascontiguousarray(normals)),
        )


class SplitFileDepth(DenseDataset):
    """Depth samples listed in a split file (FiT3D ScanNet++, mmseg-depth KITTI / NYU layouts).

    Args:
        root: dataset root; paths in the split file are relative to it (a leading slash is dropped).
        split_file: the split file, relative to ``root`` or absolute.
        depth_scale: stored depth units per metre.
        max_depth: dataset max depth (metres).
        crop: evaluation crop.
        name: dataset name.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split_file: str | os.PathLike,
        depth_scale: float = 1000.0,
        max_depth: float = 10.0,
        crop: Literal["eigen", "garg"] | None = None,
        name: str = "depth",
    ):
        self.root = _check_root(root)
        self.depth_scale = depth_scale
        self.max_depth = max_depth
        self.crop = crop
        self.name = name
        split_path = Path(split_file) if Path(split_file).is_absolute() else self.root / split_file
        self.samples: list[tuple[Path, Path]] = []
        for line in _check_root(split_path, "split_file").read_text().splitlines():
            fields = line.split()
            if len(fields) < 2 or fields[1] == "None":
                continue
            self.samples.append((self.root / fields[0].lstrip("/\\"), self.root / fields[1].lstrip("/\\")))
        # Sorted by image path, as FiT3D does, so that every run sees one order.
        self.samples.sort()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> DenseSample:
        image_path, depth_path = self.samples[index]
        return DenseSample(image=_read_rgb(image_path), depth=_read_depth_png(depth_path, self.depth_scale))


def scannetpp_depth(root: str | os.PathLike, split: Literal["train", "val"] = "val") -> SplitFileDepth:
    """FiT3D's ScanNet++ depth split (``scannetpp_<split>.txt``, mm PNGs, max 20 m, no crop)."""
    return SplitFileDepth(root, f"scannetpp_{split}.txt", depth_scale=1000.0, max_depth=20.0, name="scannetpp")


def kitti_eigen(root: str | os.PathLike, split_file: str = "kitti_eigen_test.txt") -> SplitFileDepth:
    """KITTI Eigen split (mmseg-depth layout: ``<image> <depth png> <focal>``, depth/256, 80 m, Garg crop)."""
    return SplitFileDepth(root, split_file, depth_scale=256.0, max_depth=80.0, crop="garg", name="kitti")


class MMSegFolders(DenseDataset):
    """Semantic segmentation in mmseg's folder layout: ``images/<split>`` and ``annotations/<split>``.

    Args:
        root: dataset root.
        split: sub-folder name (``training`` / ``validation`` for ADE20K).
        num_classes: number of classes after label reduction.
        reduce_zero_label: label 0 becomes ignored and every other label shifts down by one.
        name: dataset name.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        num_classes: int,
        reduce_zero_label: bool = False,
        name: str = "segmentation",
    ):
        self.root = _check_root(root)
        self.num_classes = num_classes
        self.reduce_zero_label = reduce_zero_label
        self.name = name
        image_dir = _check_root(self.root / "images" / split, "split")
        labels = {path.stem: path for path in (self.root / "annotations" / split).glob("*.png")}
        self.samples = [
            (path, labels[path.stem]) for path in sorted(image_dir.iterdir()) if path.stem in labels
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> DenseSample:
        image_path, label_path = self.samples[index]
        labels = torch.from_numpy(_read_png(label_path).astype(np.int64))
        if self.reduce_zero_label:
            labels = torch.where(labels == 0, IGNORE_INDEX, labels - 1)
            labels[labels == IGNORE_INDEX - 1] = IGNORE_INDEX  # the original 255 stays ignored
        return DenseSample(image=_read_rgb(image_path), labels=labels)


def ade20k(root: str | os.PathLike, split: Literal["training", "validation"] = "validation") -> MMSegFolders:
    """ADE20K (ADEChallengeData2016 layout): 150 classes, zero label reduced."""
    return MMSegFolders(root, split, num_classes=150, reduce_zero_label=True, name="ade20k")


class PascalVOC(DenseDataset):
    """Pascal VOC 2012 segmentation (``VOC2012`` folder layout, see the module docstring).

    Args:
        root: the ``VOC2012`` folder.
        split: ``train``, ``val`` or ``trainval`` (an ``ImageSets/Segmentation`` list).
    """

    name = "voc2012"
    num_classes = 21

    def __init__(self, root: str | os.PathLike, split: str = "val"):
        self.root = _check_root(root)
        listing = _check_root(self.root / "ImageSets" / "Segmentation" / f"{split}.txt", "split")
        self.stems = [line.strip() for line in listing.read_text().splitlines() if line.strip()]

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, index: int) -> DenseSample:
        stem = self.stems[index]
        # Palette PNGs open in mode "P": the array holds class ids directly.
        labels = torch.from_numpy(_read_png(self.root / "SegmentationClass" / f"{stem}.png").astype(np.int64))
        return DenseSample(image=_read_rgb(self.root / "JPEGImages" / f"{stem}.jpg"), labels=labels)


class ScanNetPairs(Dataset):
    """ScanNet test-1500 image pairs with depth and poses (Probe3D / LoFTR bundle).

    Args:
        root: the ``scannet_test_1500`` folder.
    """

    name = "scannet1500"

    def __init__(self, root: str | os.PathLike):
        self.root = _check_root(root)
        intrinsics = dict(np.load(self.root / "intrinsics.npz"))
        self.pairs = []
        for room, sequence, frame0, frame1 in np.load(self.root / "test.npz")["name"]:
            scene = f"scene{int(room):04d}_{int(sequence):02d}"
            camera = torch.as_tensor(np.asarray(intrinsics[scene], dtype=np.float32))[:3, :3]
            self.pairs.append((scene, int(frame0), int(frame1), camera))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> ViewPair:
        scene, *frames, camera = self.pairs[index]
        folder = self.root / scene
        images = torch.stack([_read_rgb(folder / "color" / f"{frame}.jpg") for frame in frames])
        depths = torch.stack([_read_depth_png(folder / "depth" / f"{frame}.png", 1000.0) for frame in frames])
        extrinsics = torch.stack(
            [torch.from_numpy(np.loadtxt(folder / "pose" / f"{frame}.txt", dtype=np.float32).reshape(4, 4)) for frame in frames]
        )
        height, width = images.shape[-2:]
        intrinsics = normalize_intrinsics(camera, height, width).expand(2, 3, 3).clone()
        rotation = float(relative_rotation_deg(extrinsics[0], extrinsics[1]))
        if not math.isfinite(rotation):
            raise ValueError(f"pair {index} ({scene} {frames}) has non-finite poses")
        return ViewPair(images, depths, extrinsics, intrinsics, rotation)


TASKS = ("depth", "normals", "segmentation", "correspondence")


@dataclass
class EvalData:
    """What one ``--data`` entry offers: dense splits per task and/or view pairs.

    Attributes:
        name: label used in file names and the cache key.
        dense: task → (train, test) readers of ``DenseSample``.
        pairs: readers of ``ViewPair`` for correspondence, or None.
        min_depth, max_depth, crop: depth evaluation settings.
        num_classes: number of segmentation classes.
    """

    name: str
    dense: dict[str, tuple[DenseDataset, DenseDataset]] = field(default_factory=dict)
    pairs: Sequence | None = None
    min_depth: float = 1e-3
    max_depth: float = 10.0
    crop: str | None = None
    num_classes: int | None = None

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(task for task in TASKS if task in self.dense or (task == "correspondence" and self.pairs is not None))
