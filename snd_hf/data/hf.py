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

    from snd_hf.data.hf import load_scene_dataset, save_scene_dataset, scenes_to_hf
    from snd_hf.data.scenes import SceneDataset

    save_scene_dataset(scenes_to_hf("data/synthetic"), "data/synthetic_hf")  # or .to_parquet(...)
    dataset = SceneDataset("data/synthetic_hf", image_size=(96, 128))  # random access
    stream = StreamingSceneDataset(load_scene_dataset("user/repo", streaming=True))
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm

from snd_hf.cameras import denormalize_intrinsics
from snd_hf.data.frames import FrameReadError, open_image
from snd_hf.data.sampling import SamplingOptions
from snd_hf.data.scannetpp import (
    OPTIONAL_FIELDS,
    CameraModelError,
    FolderScenes,
    FrameRecord,
    SceneRecord,
    SkipLog,
    camera_problem,
    decode_frame,
    frame_number,
)
from snd_hf.files import atomic_write
from snd_hf.schema import read_json
from snd_hf.run_folder import replace_folder

# Bumped whenever the rows written for the same folder change: a cached conversion made by an
# older converter (one that embedded frames without validating them) is then not reused.
_CONVERTER_VERSION = "2"
_SKIP_REPORT = "snd_skipped.json"


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


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FrameReadError(str(path), "file not found") from None
    except OSError as error:
        raise FrameReadError(str(path), f"unreadable file ({error.strerror or error})") from None


def _frame_rows(root: str, progress: bool, on_error: str, allow_outside_root: bool, report: dict):
    # Silent per skip: scenes_to_hf warns once with the summary.
    folder = FolderScenes(root, skip_bad=False, on_error=on_error, allow_outside_root=allow_outside_root, warn=False)
    for scene in tqdm(folder.scenes, desc="scenes to datasets", disable=not progress):
        for position, frame in enumerate(scene.frames):
            try:
                paths = folder.frame_paths(scene, position, scene.fields)
                blobs = {name: _read_bytes(path) for name, path in paths.items()}
                # Decoded once, exactly as the readers will: what is embedded is what was checked.
                decode_frame(frame, {name: (open_image(io.BytesIO(blobs[name]), str(path)), str(path)) for name, path in paths.items()}, None)
            except FrameReadError as error:
                folder.skip(error)
                continue
            yield {
                "scene": scene.scene_id,
                "file_name": frame.name,
                "extrinsics": frame.extrinsics.reshape(-1).tolist(),
                "intrinsics": frame.intrinsics.reshape(-1).tolist(),
                "height": frame.height,
                "width": frame.width,
                "is_bad": frame.is_bad,
                **{name: None for name in OPTIONAL_FIELDS},
                **{name: {"bytes": blobs[name], "path": path.name} for name, path in paths.items()},
            }
    report["skipped"] = folder.skipped


def _folder_fingerprint(root: Path, options: str) -> str:
    """A hash of every file's path, size and modification time (of the link target where it
    resolves), the converter version and ``options``: a changed folder is re-converted."""
    digest = hashlib.sha256(f"{root.resolve()}|{_CONVERTER_VERSION}|{options}".encode())
    for directory, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(directory, name)
            stat = os.stat(path) if os.path.exists(path) else os.lstat(path)
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def scenes_to_hf(
    root: str | Path,
    *,
    progress: bool = True,
    cache_dir: str | None = None,
    on_error: str = "skip",
    allow_outside_root: bool = False,
) -> datasets.Dataset:
    """Convert a ScanNet++-layout folder (a real export or :mod:`snd_hf.data.synthetic` output).

    Frames are listed by :class:`~snd_hf.data.scannetpp.FolderScenes` (same checks: camera values,
    ``file_path``, files outside the root) and every file embedded is first decoded as the readers
    decode it, so a converted dataset never holds a frame the folder reader would refuse. All
    frames are kept with their ``is_bad`` flag.

    Args:
        root: the dataset folder.
        progress: show a progress bar.
        cache_dir: the ``datasets`` cache (its default when None); an unchanged folder is
            converted once.
        on_error: ``"skip"`` leaves unusable frames (and scenes) out, with a warning that counts
            them by reason and names the first files, repeated when a cached conversion is
            reused; ``"raise"`` raises :class:`FrameReadError` naming the file.
        allow_outside_root: embed files whose real path lies outside ``root`` (symbolic links);
            refused by default.

    Returns:
        a ``datasets.Dataset`` of the module schema (write it with :func:`save_scene_dataset` or
        ``to_parquet``; push it with ``push_to_hub``).

    Raises:
        CameraModelError: a scene's camera is distorted or not a pinhole.
    """
    root = Path(root)
    report: dict = {}
    try:
        dataset = datasets.Dataset.from_generator(
            _frame_rows,
            features=scene_features(),
            gen_kwargs={"root": str(root), "progress": progress, "on_error": on_error, "allow_outside_root": allow_outside_root, "report": report},
            cache_dir=cache_dir,
            fingerprint=_folder_fingerprint(root, f"{on_error}|{allow_outside_root}"),
        )
    except datasets.exceptions.DatasetGenerationError as error:
        # datasets wraps what the generator raised; ours name the file, theirs do not.
        cause = error.__cause__ or error.__context__
        if isinstance(cause, (FrameReadError, CameraModelError)):
            raise cause from None
        raise
    _report_skips(dataset, report.get("skipped"), root)
    return dataset


def _report_skips(dataset: datasets.Dataset, skipped: SkipLog | None, root: Path) -> None:
    """Warn about the frames a conversion left out; the record lives beside the cached rows so
    that reusing them warns again."""
    record = Path(dataset.cache_files[0]["filename"]).parent / _SKIP_REPORT if dataset.cache_files else None
    if skipped is not None:
        counts, paths = dict(skipped.counts), skipped.paths
        if record is not None:
            try:
                atomic_write(record, lambda temporary: Path(temporary).write_text(json.dumps({"counts": counts, "paths": paths})))
            except OSError:
                pass  # a read-only cache: this conversion still warns, a reuse of it cannot
    else:
        try:
            recorded = read_json(record) if record is not None else {}
            counts, paths = recorded["counts"], recorded["paths"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # converted before skips were recorded, or the record is unreadable
    if counts:
        reasons = "; ".join(f"{reason}: {count} (first: {paths[reason][0]})" for reason, count in counts.items())
        warnings.warn(f"scenes_to_hf left out {sum(counts.values())} frames or scenes of {root}: {reasons}", stacklevel=3)


def save_scene_dataset(dataset: datasets.Dataset, path: str | Path, overwrite: bool = False) -> Path:
    """``dataset.save_to_disk(path)``, written beside ``path`` and swapped in whole
    (:func:`snd_hf.run_folder.replace_folder`): an earlier dataset saved here is replaced, a folder
    holding anything else is refused unless ``overwrite`` (``save_to_disk`` itself replaces any
    folder without a word), and a kill leaves the earlier folder or the new one.

    Raises:
        FileExistsError: ``path`` is a file, or holds files no snd save wrote, and ``overwrite`` is False.
    """
    return replace_folder(path, lambda folder: dataset.save_to_disk(str(folder)), "save_scene_dataset", overwrite=overwrite)


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


def _record(row: dict, key: object, where: str) -> FrameRecord:
    """The frame of a row; :class:`FrameReadError` naming it when its camera is unusable."""
    source = f"{where}:{row['scene']}/{row['file_name']}"
    try:
        frame = FrameRecord(
            name=row["file_name"],
            extrinsics=torch.tensor(row["extrinsics"], dtype=torch.float32).reshape(4, 4),
            intrinsics=torch.tensor(row["intrinsics"], dtype=torch.float32).reshape(3, 3),
            is_bad=bool(row["is_bad"]),
            key=key,
            height=row["height"],
            width=row["width"],
        )
    except (TypeError, ValueError, RuntimeError) as error:
        raise FrameReadError(source, f"malformed row ({type(error).__name__}: {error})") from None
    problem = camera_problem(frame.extrinsics, _pixel_intrinsics(frame), frame.height, frame.width)
    if problem is not None:
        raise FrameReadError(source, f"invalid camera ({problem})")
    return frame


def _pixel_intrinsics(frame: FrameRecord) -> torch.Tensor:
    if not (isinstance(frame.height, int) and isinstance(frame.width, int)):
        return frame.intrinsics  # camera_problem reports the size
    return denormalize_intrinsics(frame.intrinsics.double(), frame.height, frame.width)


def _scene_record(scene_id: str, frames: list[FrameRecord], fields: tuple[str, ...], location: str) -> SceneRecord:
    frames = sorted(frames, key=lambda frame: (frame_number(frame.name), frame.name))
    return SceneRecord(scene_id, frames, fields, location)


def _decode_row(row: dict, frame: FrameRecord, scene: SceneRecord, size, fields, where: str) -> dict[str, torch.Tensor]:
    """Decode the undecoded image columns (``{"bytes", "path"}``) of one row, as the folder reader
    decodes files: every failure is a :class:`FrameReadError` naming the scene, frame and column."""
    files = {}
    for name in ("image", "mask") + tuple(f for f in fields if f in scene.fields):
        source = f"{where}:{scene.scene_id}/{frame.name}[{name}]"
        value = row[name]
        if value is None:
            raise FrameReadError(source, "file not found")
        # Only embedded bytes are read: a row's "path" could name any file of this machine.
        if not isinstance(value, dict) or not isinstance(value.get("bytes"), bytes):
            raise FrameReadError(source, "unreadable image (no embedded bytes; convert the files with scenes_to_hf)")
        files[name] = (open_image(io.BytesIO(value["bytes"]), source), source)
    return decode_frame(frame, files, size)


class HFScenes:
    """A :class:`~snd_hf.data.scenes.SceneSource` over a ``datasets.Dataset`` of the module schema.

    Images are decoded here from their embedded bytes (never by ``datasets``), so an unreadable
    frame is a :class:`FrameReadError` naming it, counted as a skip by
    :class:`~snd_hf.data.scenes.SceneDataset` like a bad file of a folder.

    Args:
        dataset: the rows (random access).
        skip_bad: drop frames flagged ``is_bad``.
        on_error: ``"skip"`` drops rows whose camera is unusable (the checks of
            :func:`~snd_hf.data.scannetpp.camera_problem`), counting them in ``skipped``;
            ``"raise"`` raises :class:`FrameReadError`.
    """

    def __init__(self, dataset: datasets.Dataset, *, skip_bad: bool = True, on_error: str = "skip"):
        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(
                f"`dataset` must be a datasets.Dataset (random access), got {type(dataset).__name__}; "
                "use StreamingSceneDataset for an IterableDataset."
            )
        if on_error not in ("skip", "raise"):
            raise ValueError(f"`on_error` must be 'skip' or 'raise', got {on_error!r}.")
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
            try:
                frame = _record(row, index, self.where)
            except FrameReadError as error:
                if on_error == "raise":
                    raise
                self.skipped.add(error.kind, error.path)
                continue
            if frame.is_bad and skip_bad:
                self.skipped.add("is_bad frame", f"{self.where}:{row['scene']}/{row['file_name']}", warn=False)
                continue
            by_scene.setdefault(row["scene"], []).append(frame)
            first_rows.setdefault(row["scene"], index)
        self.scenes = []
        for scene_id, frames in by_scene.items():
            first = presence[first_rows[scene_id]]
            fields = tuple(name for name in OPTIONAL_FIELDS if first.column(name)[0].is_valid)
            self.scenes.append(_scene_record(scene_id, frames, fields, f"{self.where}:{scene_id}"))
        self._views: dict[tuple[str, ...], datasets.Dataset] = {}

    def load_view(
        self, scene: SceneRecord, position: int, size: tuple[int, int] | None, fields: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        """Same contract as :meth:`snd_hf.data.scannetpp.FolderScenes.load_view`."""
        columns = ("image", "mask") + tuple(name for name in fields if name in scene.fields)
        if columns not in self._views:
            self._views[columns] = self.dataset.select_columns(list(columns)).with_format("arrow")  # undecoded
        frame = scene.frames[position]
        table = self._views[columns][frame.key]
        row = {name: table.column(name)[0].as_py() for name in columns}
        return _decode_row(row, frame, scene, size, fields, self.where)


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
    draw)`` exactly as :class:`SceneDataset` seeds them, so both give the same samples. With
    ``on_error="skip"`` (the default) rows with an unusable camera, scenes with too few frames and
    samples with an unreadable frame are left out and counted in ``skipped`` (a skipped sample
    is not replaced); ``"raise"`` raises. With several DataLoader workers, ``datasets`` deals
    whole shards to the workers (a worker without a shard stops; each counts its own skips), so
    a scene must not straddle shards. Other keyword arguments are those of
    :class:`~snd_hf.data.scenes.SceneDataset`.
    """

    def __init__(self, dataset: datasets.IterableDataset | datasets.Dataset, *, on_error: str = "skip", **options):
        self.options = SamplingOptions(**options)
        if on_error not in ("skip", "raise"):
            raise ValueError(f"`on_error` must be 'skip' or 'raise', got {on_error!r}.")
        self.on_error = on_error
        if isinstance(dataset, datasets.Dataset):
            dataset = dataset.to_iterable_dataset()  # one shard: workers never split a scene
        self.dataset = dataset.cast(
            datasets.Features({**scene_features(), **{name: datasets.Image(decode=False) for name in ("image", "mask") + OPTIONAL_FIELDS}})
        )
        self.epoch = 0
        self.skipped = SkipLog()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _skip(self, error: FrameReadError) -> None:
        if self.on_error == "raise":
            raise error
        self.skipped.add(error.kind, error.path)

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
            frames = []
            for index, row in enumerate(rows):
                try:
                    frame = _record(row, index, "stream")
                except FrameReadError as error:
                    self._skip(error)
                    continue
                if not (self.options.skip_bad and frame.is_bad):
                    frames.append(frame)
            fields = tuple(name for name in OPTIONAL_FIELDS if rows[0][name] is not None)
            scene = _scene_record(rows[0]["scene"], frames, fields, f"stream:{rows[0]['scene']}")
            if len(scene) < self.options.min_frames:
                self.skipped.add("too few frames", scene.location)
                continue
            source = _BufferedScene(scene, rows)
            for draw in range(self.options.samples_per_scene):
                try:
                    sample = self.options.sample(source, scene, self.options.rng(self.epoch, scene.scene_id, draw))
                except FrameReadError as error:
                    self._skip(error)
                    continue
                yield sample
