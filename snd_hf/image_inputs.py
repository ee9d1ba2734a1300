"""The images `snd extract` reads: a list of files, or a `datasets` image dataset (local or Hub, in memory-mapped
or streaming mode), as items of (image id, encoded image).

Every image is decoded by :func:`snd_hf.images.open_image` (EXIF orientation, 16-bit, alpha, the pixel cap),
whichever the input: a dataset's image column is read undecoded (``datasets.Image(decode=False)``), so an image
gives the same features from a file list and from a dataset of the same files.

Image ids name the outputs (``{id}.safetensors``, the ``image_id`` column of shards): the file's stem for a file
list and for dataset rows that carry a file name (an ``imagefolder``, most Hub image datasets); the row number
(``000000042``) for an indexed dataset whose rows do not all carry a distinct file name.
"""

from __future__ import annotations

import hashlib
import io
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets.distributed import split_dataset_by_node

__all__ = ["FileImages", "DatasetImages", "ImageItem", "open_image_dataset"]


@dataclass(frozen=True)
class ImageItem:
    """One image to extract.

    Attributes:
        image_id: the name of its outputs.
        file: the image file, or its encoded bytes.
        source: how errors name it (the path, or ``dataset[row]``).
    """

    image_id: str
    file: Path | bytes
    source: str

    def open(self) -> Path | io.BytesIO:
        """A path or a binary file object for :func:`snd_hf.images.open_image`."""
        return self.file if isinstance(self.file, Path) else io.BytesIO(self.file)


def ids_fingerprint(ids: Sequence[str]) -> str:
    """SHA-256 of an ordered id list: which image lands in which shard of an indexed run."""
    digest = hashlib.sha256()
    for image_id in ids:
        digest.update(image_id.encode() + b"\0")
    return digest.hexdigest()


class FileImages:
    """A checked list of image files (see :func:`snd_hf.images.check_images`); ids are the file stems."""

    streaming = False

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)
        self.ids = [path.stem for path in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def items(self, indices: Sequence[int]) -> Iterator[ImageItem]:
        """The items at ``indices``, in that order."""
        for index in indices:
            path = self.paths[index]
            yield ImageItem(path.stem, path, str(path))


def _undecoded(struct: dict[str, Any], source: str) -> Path | bytes:
    if struct is None:
        raise ValueError(f"{source} has no image")
    if struct.get("bytes") is not None:
        return struct["bytes"]
    if struct.get("path"):
        return Path(struct["path"])
    raise ValueError(f"{source} has neither image bytes nor a file path")


def _stem(struct: dict[str, Any] | None) -> str | None:
    path = (struct or {}).get("path")
    return Path(path).stem if path else None


class DatasetImages:
    """The image column of a `datasets` dataset, undecoded.

    Args:
        dataset: a ``datasets.Dataset`` (indexed: ``len``, ``ids`` and ``items(indices)``) or a
            ``datasets.IterableDataset`` (streaming: :meth:`stream` only).
        name: how errors and the run manifest name it.
        image_column: the column holding the images; the first column of type ``datasets.Image`` when None.

    Raises:
        ValueError: no such column, or no image column, naming the columns there are.
    """

    def __init__(self, dataset: datasets.Dataset | datasets.IterableDataset, name: str, image_column: str | None = None):
        features = dataset.features or {}
        if image_column is None:
            image_column = next((column for column, feature in features.items() if isinstance(feature, datasets.Image)), None)
            if image_column is None:
                raise ValueError(f"dataset {name} has no image column among {list(features)}; pass --image-column")
        elif features and image_column not in features:
            raise ValueError(f"dataset {name} has no column {image_column!r}; its columns are {list(features)}")
        self.name = name
        self.image_column = image_column
        self.dataset = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
        self.streaming = isinstance(dataset, datasets.IterableDataset)
        self._ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def ids(self) -> list[str]:
        """Every row's id (indexed datasets only), read from the file names without the image bytes."""
        if self._ids is None:
            stems = []
            for batch in self.dataset.with_format("arrow").iter(batch_size=4096):
                stems += [Path(path).stem if path else None for path in batch.column(0).combine_chunks().field("path").to_pylist()]
            distinct = None not in stems and len(set(stems)) == len(stems)
            self._ids = stems if distinct else [f"{row:09d}" for row in range(len(stems))]
        return self._ids

    def items(self, indices: Sequence[int]) -> Iterator[ImageItem]:
        """The rows at ``indices`` of an indexed dataset, in that order (a ``range`` is read contiguously)."""
        ids = self.ids
        for row, example in zip(indices, self.dataset.select(indices)):
            source = f"{self.name}[{row}]"
            yield ImageItem(ids[row], _undecoded(example[self.image_column], source), source)

    def stream(self, rank: int, world_size: int, skip: int = 0) -> Iterator[ImageItem]:
        """This process's part of a streaming dataset (``datasets.distributed.split_dataset_by_node``),
        its first ``skip`` rows read but left out; ids are the file stems, which streamed rows must carry."""
        part = split_dataset_by_node(self.dataset, rank=rank, world_size=world_size)
        # Skipped with islice, not IterableDataset.skip: that one skips rows of the whole stream before the split.
        for row, example in enumerate(itertools.islice(part, skip, None), skip):
            struct = example[self.image_column]
            source = f"{self.name} (process {rank} of {world_size}, row {row})"
            image_id = _stem(struct)
            if image_id is None:
                raise ValueError(f"{source} has no file name to name its features; pass the dataset without --streaming")
            yield ImageItem(image_id, _undecoded(struct, source), f"{source}: {struct.get('path')}")


def open_image_dataset(
    name: str, split: str = "train", streaming: bool = False, image_column: str | None = None
) -> DatasetImages:
    """Open a `datasets` image dataset: a folder written by ``save_to_disk`` (``datasets.load_from_disk``), or
    anything ``datasets.load_dataset`` opens (a local ``imagefolder``, a Hub id).

    Args:
        name: the folder or the Hub id.
        split: the split to read (``train`` by default; a saved single dataset has none).
        streaming: read it as a ``datasets.IterableDataset`` (nothing is copied to the cache).
        image_column: see :class:`DatasetImages`.

    Raises:
        ValueError: the split does not exist, naming those that do; no image column.
    """
    path = Path(name)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"dataset {name} has no split {split!r}; its splits are {list(dataset)} (--split)")
            dataset = dataset[split]
        if streaming:
            dataset = dataset.to_iterable_dataset()
    else:
        try:
            dataset = datasets.load_dataset(name, split=split, streaming=streaming)
        except ValueError as error:
            raise ValueError(f"dataset {name}, split {split!r}: {error}") from None
    return DatasetImages(dataset, name, image_column)
