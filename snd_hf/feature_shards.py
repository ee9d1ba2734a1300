"""Features of many images as Parquet shards that `datasets` loads, with an index (`snd extract --format shards`).

A shard ``shard-*.parquet`` holds one row per image:

========================  ================  ===================================================
column                    type              content
========================  ================  ===================================================
``image_id``              string            the image's id (:mod:`snd_hf.image_inputs`)
``feature_map``           list<float32>     final-norm patch features, flattened from [C, h, w]
``feature_shape``         list<int32>       [C, h, w]
``cls``                   list<float32>     final-norm CLS token [C]
``input_size``            list<int32>       [H, W] of the processed image the model saw
``weights_sha256``        string            the model's fingerprint (:func:`snd_hf.loading.weights_hash`)
========================  ================  ===================================================

Each shard is written whole or not at all (:func:`snd_hf.files.atomic_write`), one Parquet row group per model
batch, so memory does not grow with the shard. Once every shard is written the main process writes
``index.parquet`` (``image_id``, ``shard``, ``row``: where each image is) and ``index.json`` (the shards, their
row counts and sizes, the model). Load them with :func:`load_features`, or with `datasets` directly::

    datasets.load_dataset("parquet", data_files="features/shard-*.parquet", split="train")
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .files import atomic_write

__all__ = ["INDEX_JSON", "INDEX_PARQUET", "SCHEMA", "load_features", "read_rows", "shard_rows", "write_index", "write_shard"]

# Dictionary encoding only where values repeat (on float features it only adds size); floats byte-stream-split,
# then zstd: the features' exponent bytes compress, their mantissas hardly.
PARQUET_OPTIONS = {"use_dictionary": ["weights_sha256"], "compression": "zstd", "use_byte_stream_split": ["feature_map", "cls"]}
INDEX_JSON = "index.json"
INDEX_PARQUET = "index.parquet"
SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("feature_map", pa.list_(pa.float32())),
        ("feature_shape", pa.list_(pa.int32())),
        ("cls", pa.list_(pa.float32())),
        ("input_size", pa.list_(pa.int32())),
        ("weights_sha256", pa.string()),
    ]
)


def _table(rows: list[tuple[str, Any]], weights_sha256: str) -> pa.Table:
    """Rows of (image id, `snd_hf.extract.ImageFeatures`) as a table of :data:`SCHEMA`."""
    return pa.table(
        {
            "image_id": [image_id for image_id, _ in rows],
            "feature_map": [features.feature_map.reshape(-1).numpy() for _, features in rows],
            "feature_shape": [list(features.feature_map.shape) for _, features in rows],
            "cls": [features.cls.numpy() for _, features in rows],
            "input_size": [list(features.input_size) for _, features in rows],
            "weights_sha256": [weights_sha256] * len(rows),
        },
        schema=SCHEMA,
    )


def write_shard(path: str | os.PathLike, rows: Iterable[tuple[str, Any]], weights_sha256: str, batch_size: int = 8) -> int:
    """Write one shard from ``rows`` of (image id, `ImageFeatures`), ``batch_size`` rows per row group.

    The shard appears under ``path`` only once its last row is written: a process killed while writing leaves
    a temporary that the next run removes (:mod:`snd_hf.files`).

    Returns:
        the number of rows written.
    """
    written = 0

    def write(temporary: str) -> None:
        nonlocal written
        with pq.ParquetWriter(temporary, SCHEMA, **PARQUET_OPTIONS) as writer:
            group: list[tuple[str, Any]] = []
            for row in rows:
                group.append(row)
                if len(group) == batch_size:
                    writer.write_table(_table(group, weights_sha256))
                    written += len(group)
                    group = []
            if group:
                writer.write_table(_table(group, weights_sha256))
                written += len(group)

    atomic_write(Path(path), write)
    return written


def shard_rows(path: str | os.PathLike) -> int:
    """Rows of a written shard, from its footer."""
    return pq.ParquetFile(path).metadata.num_rows


def write_index(folder: Path, shards: list[str], info: dict[str, Any]) -> dict[str, Any]:
    """Write ``index.parquet`` (where each image is) and ``index.json`` for the ``shards`` of ``folder``.

    Args:
        folder: the output folder.
        shards: the shard file names, in order.
        info: facts recorded in ``index.json`` (model, fingerprint, sizes).

    Returns:
        the ``index.json`` content.

    Raises:
        ValueError: an image id appears twice, naming both shards.
    """
    seen: dict[str, str] = {}
    ids, shard_numbers, rows, entries = [], [], [], []
    for number, name in enumerate(shards):
        column = pq.read_table(folder / name, columns=["image_id"]).column(0).to_pylist()
        for row, image_id in enumerate(column):
            if image_id in seen:
                raise ValueError(f"image id {image_id!r} is in {seen[image_id]} and {name}: the input names two images alike")
            seen[image_id] = name
        ids += column
        shard_numbers += [number] * len(column)
        rows += range(len(column))
        entries.append({"file": name, "images": len(column), "bytes": (folder / name).stat().st_size})
    table = pa.table({"image_id": ids, "shard": pa.array(shard_numbers, pa.int32()), "row": pa.array(rows, pa.int64())})
    atomic_write(folder / INDEX_PARQUET, lambda temporary: pq.write_table(table, temporary))
    total_bytes = sum(entry["bytes"] for entry in entries)
    index = {
        **info,
        "images": len(ids),
        "bytes": total_bytes,
        "bytes_per_image": round(total_bytes / max(len(ids), 1)),
        "shards": entries,
    }
    text = json.dumps(index, indent=2) + "\n"
    atomic_write(folder / INDEX_JSON, lambda temporary: Path(temporary).write_text(text))
    return index


def read_rows(folder: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """Every image's ``feature_map`` [C, h, w] and ``cls`` [C] in an output folder, by image id (read with
    pyarrow; for folders that fit in memory, e.g. to compare runs)."""
    folder = Path(folder)
    index = json.loads((folder / INDEX_JSON).read_text())
    result = {}
    for entry in index["shards"]:
        for row in pq.read_table(folder / entry["file"]).to_pylist():
            result[row["image_id"]] = {
                "feature_map": torch.tensor(row["feature_map"]).reshape(row["feature_shape"]),
                "cls": torch.tensor(row["cls"]),
            }
    return result


def _as_tensors(batch: dict[str, list]) -> dict[str, list]:
    batch["feature_map"] = [torch.tensor(values).reshape(shape) for values, shape in zip(batch["feature_map"], batch["feature_shape"])]
    batch["cls"] = [torch.tensor(values) for values in batch["cls"]]
    return batch


def load_features(folder: str | os.PathLike, streaming: bool = False, cache_dir: str | None = None):
    """The shards of an output folder as a ``datasets.Dataset`` (``streaming``: an ``IterableDataset``, read in
    place), in index order; each row's ``feature_map`` is a tensor [C, h, w] and ``cls`` a tensor [C].

    Without ``streaming``, `datasets` first converts the shards into its cache (``cache_dir``, by default
    ``~/.cache/huggingface/datasets``): as much disk again as the shards.

    Raises:
        FileNotFoundError: ``folder`` has no ``index.json`` (the run did not finish: run it again).
    """
    import datasets  # imported here: reading shards with pyarrow alone does not need it

    folder = Path(folder)
    index_path = folder / INDEX_JSON
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} not found: the run writing {folder} has not finished; run it again to complete it")
    files = [str(folder / entry["file"]) for entry in json.loads(index_path.read_text())["shards"]]
    dataset = datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming, cache_dir=cache_dir)
    if streaming:
        return dataset.map(_as_tensors, batched=True)
    return dataset.with_transform(_as_tensors)
