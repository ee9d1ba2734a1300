"""Scenes as Hugging Face ``datasets``: schema, converter, loaders and scene readers.

Schema: **one row per frame**, rows grouped by scene and sorted by frame number (one row per
scene would make every row a whole scene's images, too large to stream or shuffle).

============  ===============================  ===============================================
column        feature                          content
============  ===============================  ===============================================
scene         string                           scene id
file_name     string                           image file name (frames sort by its number)
image         Image                            RGB (the original file's bytes)
mask          Image                            instance ids, 8/16-bit single channel
extrinsics    Sequence(float32, 16)            camera-to-world, OpenCV axes, row-major 4x4
intrinsics    Sequence(float32, 9)             normalised (row 0 / W, row 1 / H), row-major 3x3
height        int32                            image height in pixels
width         int32                            image width in pixels
is_bad        bool                             the source's ``is_bad`` flag (kept, not dropped)
depth         Image (may be None)              16-bit z-depth in millimetres, 0 = invalid
normals       Image (may be None)              8-bit RGB camera-frame normals, rgb / 127.5 - 1
semantics     Image (may be None)              class ids
============  ===============================  ===============================================

Images keep the source files' bytes, so a converted dataset decodes to exactly the tensors
the folder reader gives. Typical use::

    from snd_hf.data.hf import scenes_to_hf, load_scene_dataset
    from snd_hf.data.scenes import SceneDataset

    scenes_to_hf("data/synthetic").save_to_disk("data/synthetic_hf")   # or .to_parquet(...)
    dataset = SceneDataset("data/synthetic_hf", image_size=(96, 128))  # random access
    stream = StreamingSceneDataset(load_scene_dataset("user/repo", streaming=True))
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm

from snd_hf.data.frames import FrameReadError, decode_view, open_image
from snd_hf.data.sampling import SamplingOptions
from snd_hf.data.scannetpp import (
    OPTIONAL_FIELDS,
    FolderScenes,
    FrameRecord,
    SceneRecord,
    SkipLog,
    frame_number,
)


def scene_features() -> datasets.Features:
    """The ``datasets.Features`` of the schema in the module docstring."""
    return datasets.Features(
        {
            "scene": datasets.Value("string"),
            "file_name": datasets.Value("string"),
            "image": datasets.Image(),
            "mask": datasets.Image(),
            "extrinsics": datasets.Sequence(datasets.Value("float32"), length=16),
            "intrinsics": datasets.Sequence(datasets.Value("float32"), length=9),
            "height": datasets.Value("int32"),
            "width": datasets.Value("int32"),
            "is_bad": datasets.Value("bool"),
            **{name: datasets.Image() for name in OPTIONAL_FIELDS},
        }
    )


def _frame_rows(root: str, progress: bool):
    folder = FolderScenes(root, skip_bad=False)
    for scene in tqdm(folder.scenes, desc="scenes to datasets", disable=not progress):
        scene_dir = Path(scene.location)
        for frame in scene.frames:
            stem = Path(frame.name).stem
            files = {"image": scene_dir / "images" / frame.name, "mask": scene_dir / "instance_segmentation" / f"{frame.name}.png"}
            files.update({name: scene_dir / name / f"{stem}.png" for name in scene.fields})
            row = {
                "scene": scene.scene_id,
                "file_name": frame.name,
                "extrinsics": frame.extrinsics.reshape(-1).tolist(),
                "intrinsics": frame.intrinsics.reshape(-1).tolist(),
                "height": scene.height,
                "width": scene.width,
                "is_bad": frame.is_bad,
                **{name: None for name in OPTIONAL_FIELDS},
            }
            for name, path in files.items():
                if not path.is_file():
                    raise FrameReadError(str(path), "file not found")
                row[name] = {"bytes": path.read_bytes(), "path": path.name}
            yield row


def _folder_fingerprint(root: Path) -> str:
    """A hash of every file's path, size and modification time: a changed folder is re-converted."""
    digest = hashlib.sha256(str(root.resolve()).encode())
    for directory, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            stat = os.stat(os.path.join(directory, name))
            digest.update(f"{directory}/{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def scenes_to_hf(root: str | Path, *, progress: bool = True, cache_dir: str | None = None) -> datasets.Dataset:
    """Convert a ScanNet++-layout folder (a real export or :mod:`snd_hf.data.synthetic` output).

    All frames are kept with their ``is_bad`` flag; frames missing their image or mask are
    left out, as by :class:`~snd_hf.data.scannetpp.FolderScenes`. A missing optional map of a
    scene that has the folder raises :class:`FrameReadError` naming it.

    Returns:
        a ``datasets.Dataset`` of the module schema (write it with ``save_to_disk`` or
        ``to_parquet``; push it with ``push_to_hub``).
    """
    root = Path(root)
    return datasets.Dataset.from_generator(
        _frame_rows,
        features=scene_features(),
        gen_kwargs={"root": str(root), "progress": progress},
        cache_dir=cache_dir,
        fingerprint=_folder_fingerprint(root),
    )


def load_scene_dataset(
    source: str | Path, *, split: str = "train", streaming: bool = False
) -> datasets.Dataset | datasets.IterableDataset:
    """Open scenes stored with the module schema.

    Args:
        source: a folder written by ``save_to_disk``, a folder of ``*.parquet`` files, or a Hub
            dataset id (``load_dataset``; needs network access).
        split: the split to read from parquet files or the Hub.
        streaming: return an ``IterableDataset`` that reads rows lazily.
    """
    path = Path(source)
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded[split]
        return loaded.to_iterable_dataset() if streaming else loaded
    if path.is_dir():
        files = sorted(str(file) for file in path.rglob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"`source` {str(path)!r} holds neither a saved dataset nor parquet files.")
        return datasets.load_dataset("parquet", data_files={split: files}, split=split, streaming=streaming)
    return datasets.load_dataset(str(source), split=split, streaming=streaming)


def _record(row: dict, key: object) -> FrameRecord:
    return FrameRecord(
        name=row["file_name"],
        extrinsics=torch.tensor(row["extrinsics"], dtype=torch.float32).reshape(4, 4),
        intrinsics=torch.tensor(row["intrinsics"], dtype=torch.float32).reshape(3, 3),
        is_bad=bool(row["is_bad"]),
        key=key,
    )


def _scene_record(scene_id: str, frames: list[FrameRecord], first_row: dict, fields: tuple[str, ...], location: str) -> SceneRecord:
    frames = sorted(frames, key=lambda frame: (frame_number(frame.name), frame.name))
    return SceneRecord(scene_id, frames, int(first_row["height"]), int(first_row["width"]), fields, location)


def _decode_row(row: dict, frame: FrameRecord, scene: SceneRecord, size, fields, where: str) -> dict[str, torch.Tensor]:
    files = {}
    for name in ("image", "mask") + tuple(f for f in fields if f in scene.fields):
        source = f"{where}:{scene.scene_id}/{frame.name}[{name}]"
        if row[name] is None:
            raise FrameReadError(source, "file not found")
        # Undecoded columns ({"bytes", "path"}) are opened here, only for the frames drawn.
        files[name] = (open_image(io.BytesIO(row[name]["bytes"]), source) if isinstance(row[name], dict) else row[name], source)
    return decode_view(files, size)


class HFScenes:
    """A :class:`~snd_hf.data.scenes.SceneSource` over a ``datasets.Dataset`` of the module schema.

    Args:
        dataset: the rows (random access).
        skip_bad: drop frames flagged ``is_bad``.
    """

    def __init__(self, dataset: datasets.Dataset, *, skip_bad: bool = True):
        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(
                f"`dataset` must be a datasets.Dataset (random access), got {type(dataset).__name__}; "
                "use StreamingSceneDataset for an IterableDataset."
            )
        missing = set(scene_features()) - set(dataset.column_names)
        if missing:
            raise ValueError(f"`dataset` lacks the columns {sorted(missing)} of the snd-hf scene schema.")
        self.dataset = dataset
        self.skipped = SkipLog()
        self.where = Path(dataset.cache_files[0]["filename"]).parent.name if dataset.cache_files else "datasets"
        meta = dataset.select_columns(["scene", "file_name", "extrinsics", "intrinsics", "height", "width", "is_bad"])
        presence = dataset.select_columns(list(OPTIONAL_FIELDS)).with_format("arrow")  # no image decoding
        by_scene: dict[str, list[FrameRecord]] = {}
        first_rows: dict[str, int] = {}
        for index, row in enumerate(meta):
            frame = _record(row, index)
            if frame.is_bad and skip_bad:
                self.skipped.add("is_bad frame", f"{self.where}:{row['scene']}/{row['file_name']}", warn=False)
                continue
            by_scene.setdefault(row["scene"], []).append(frame)
            first_rows.setdefault(row["scene"], index)
        self.scenes = []
        for scene_id, frames in by_scene.items():
            first = presence[first_rows[scene_id]]
            fields = tuple(name for name in OPTIONAL_FIELDS if first.column(name)[0].is_valid)
            self.scenes.append(_scene_record(scene_id, frames, meta[first_rows[scene_id]], fields, f"{self.where}:{scene_id}"))
        self._views: dict[tuple[str, ...], datasets.Dataset] = {}

    def load_view(
        self, scene: SceneRecord, position: int, size: tuple[int, int] | None, fields: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        """Same contract as :meth:`snd_hf.data.scannetpp.FolderScenes.load_view`."""
        columns = ("image", "mask") + tuple(name for name in fields if name in scene.fields)
        if columns not in self._views:
            self._views[columns] = self.dataset.select_columns(list(columns))
        frame = scene.frames[position]
        return _decode_row(self._views[columns][frame.key], frame, scene, size, fields, self.where)


class _BufferedScene:
    """One streamed scene held in memory, as a SceneSource for :func:`build_sample`."""

    def __init__(self, scene: SceneRecord, rows: list[dict]):
        self.scenes, self.skipped, self.rows = [scene], SkipLog(), rows

    def load_view(self, scene: SceneRecord, position: int, size, fields) -> dict[str, torch.Tensor]:
        frame = scene.frames[position]
        return _decode_row(self.rows[frame.key], frame, scene, size, fields, "stream")


class StreamingSceneDataset(torch.utils.data.IterableDataset):
    """Samples from a streamed ``datasets.IterableDataset`` of the module schema.

    Rows are read in order; each scene's frames are buffered undecoded (rows of a scene must be
    contiguous, as :func:`scenes_to_hf` writes them) and ``samples_per_scene`` draws are made
    from it with :func:`~snd_hf.data.sampling.sample_views`, seeded by ``(seed, epoch, scene id,
    draw)`` exactly as :class:`SceneDataset` seeds them, so both give the same samples. Scenes
    with too few frames are skipped and counted in ``skipped``. With several DataLoader
    workers, ``datasets`` deals whole shards to the workers (a worker without a shard stops), so
    a scene must not straddle shards. Keyword arguments are those of
    :class:`~snd_hf.data.scenes.SceneDataset` (but ``on_error``).
    """

    def __init__(self, dataset: datasets.IterableDataset | datasets.Dataset, **options):
        self.options = SamplingOptions(**options)
        if isinstance(dataset, datasets.Dataset):
            dataset = dataset.to_iterable_dataset()  # one shard: workers never split a scene
        self.dataset = dataset.cast(
            datasets.Features({**scene_features(), **{name: datasets.Image(decode=False) for name in ("image", "mask") + OPTIONAL_FIELDS}})
        )
        self.epoch = 0
        self.skipped = SkipLog()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _scenes(self):
        rows: list[dict] = []
        for row in self.dataset:
            if rows and row["scene"] != rows[0]["scene"]:
                yield rows
                rows = []
            rows.append(row)
        if rows:
            yield rows

    def __iter__(self):
        for rows in self._scenes():
            frames = [_record(row, index) for index, row in enumerate(rows) if not (self.options.skip_bad and row["is_bad"])]
            fields = tuple(name for name in OPTIONAL_FIELDS if rows[0][name] is not None)
            scene = _scene_record(rows[0]["scene"], frames, rows[0], fields, f"stream:{rows[0]['scene']}")
            if len(scene) < self.options.min_frames:
                self.skipped.add("too few frames", scene.location)
                continue
            source = _BufferedScene(scene, rows)
            for draw in range(self.options.samples_per_scene):
                yield self.options.sample(source, scene, self.options.rng(self.epoch, scene.scene_id, draw))
