"""`snd extract`: dense SnD features of images, saved as safetensors with a PCA picture beside each.

    snd extract photos/*.jpg --model david-shavin/SnD --size small --out features/
    snd extract room.png --model path/to/native-checkpoint --out features/

For every image ``{stem}.png`` the output folder gets ``{stem}.safetensors`` (``feature_map``
[C, h, w] and ``cls`` [C], float32, with the model, its weights' SHA-256 and the input size in the
metadata) and ``{stem}_pca.png``: the processed image (as the model saw it, resized) beside the first
three principal components of its features as colours, one block of ``--pca-scale`` (14) pixels per patch,
so that the two halves line up; titled with the model and the patch grid.

Images are decoded by :mod:`snd_hf.images` (EXIF orientation, 16-bit, alpha, a pixel cap) and streamed:
every file's header is checked before the model loads, then each image is decoded, preprocessed, run
(``--batch-size`` at a time) and written before the next batch is decoded, so memory does not grow with
the number of images. The output folder is a :class:`snd_hf.run_folder.RunFolder`: ``snd_run.json``
records the model and preprocessing, a re-run with another model is refused unless ``--overwrite``,
and a lock keeps two runs from writing into it at once.

At scale (see docs/scale.md)::

    accelerate launch --multi_gpu --num_processes 8 -m snd_hf.cli extract --dataset my/images --streaming \
        --model david-shavin/SnD --format shards --out features/

- **Processes**: under ``accelerate launch`` each process (GPU, node, or CPU process with
  ``ACCELERATE_USE_CPU=true``) extracts its part (``PartialState.split_between_processes`` of the images or
  shards still to do; ``datasets.distributed.split_dataset_by_node`` of a streamed dataset), in batches on its
  device, in bfloat16 where the device supports it (``--dtype auto``; float32 on CPU). The main process alone
  checks the inputs and claims the output folder; the others wait for it and stop with its error.
- **Inputs**: image files, or ``--dataset``: any `datasets` image dataset (:mod:`snd_hf.image_inputs`).
- **Outputs**: ``--format files`` (the default, above) or ``--format shards``: Parquet shards of
  ``--shard-size`` images plus an index (:mod:`snd_hf.feature_shards`; no PCA pictures).
- **Resuming**: a run stopped in any way (even ``kill -9``) and started again with the same arguments redoes
  only the images or shards not written: every file is written whole or not at all (an image whose files are
  there is not extracted again: delete them to redo it). Other arguments into the
  same folder are refused by the run manifest (a shards run's identity also holds its shard size and its
  images, or for a streamed dataset its name, split and number of processes).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .distributed import main_then_share, process_state
from .feature_shards import INDEX_JSON, INDEX_PARQUET, shard_rows, write_index, write_shard
from .files import atomic_write
from .image_inputs import DatasetImages, FileImages, ImageItem, ids_fingerprint, open_image_dataset
from .image_processing_snd import SnDImageProcessor
from .images import MAX_PIXELS, check_images, open_image
from .loading import weights_hash
from .modeling_snd import SnDModel
from .run_folder import RunFolder
from .visualization import pca_rgb, save_panel

PROCESSOR_CONFIG = "preprocessor_config.json"
# Processor settings that do not change any pixel value: left out of a run's identity.
NOT_IN_IDENTITY = ("max_pixels", "image_processor_type", "processor_class")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class ImageFeatures:
    """SnD features of one image.

    Attributes:
        feature_map: final-norm patch features. [C, h, w]
        cls: final-norm CLS token. [C]
        input_size: (H, W) of the processed image the model saw (multiples of the patch size).
    """

    feature_map: torch.Tensor  # [C, h, w]
    cls: torch.Tensor  # [C]
    input_size: tuple[int, int]


def output_names(image_id: str) -> tuple[str, str]:
    """The files a run writes for one image: ``{id}.safetensors`` and ``{id}_pca.png``."""
    return f"{image_id}.safetensors", f"{image_id}_pca.png"


def load_processor(model_source: str | os.PathLike, shortest_edge: int, max_pixels: int = MAX_PIXELS) -> SnDImageProcessor:
    """The checkpoint's own preprocessing when a local folder holds one, the defaults otherwise;
    the shortest edge is always ``shortest_edge``."""
    if shortest_edge < 14:
        raise ValueError(f"shortest_edge must be at least one patch (14), got {shortest_edge}")
    folder = Path(model_source)
    options = {"size": {"shortest_edge": shortest_edge}, "max_pixels": max_pixels}
    if (folder / PROCESSOR_CONFIG).is_file():
        return SnDImageProcessor.from_pretrained(folder, **options)
    return SnDImageProcessor(**options)


def run_identity(model: torch.nn.Module, processor: SnDImageProcessor) -> dict[str, Any]:
    """What determines the features a run writes: the weights, their dtype when not float32, and every
    pixel-changing processor setting."""
    settings = {key: value for key, value in processor.to_dict().items() if key not in NOT_IN_IDENTITY}
    dtype = next(model.parameters()).dtype
    # float32 stays implicit: folders written before --dtype existed keep their identity.
    return {"weights_sha256": weights_hash(model), "processor": settings, **({} if dtype == torch.float32 else {"dtype": str(dtype)})}


@torch.no_grad()
def run_model(model: SnDModel, pixel_values: torch.Tensor) -> list[ImageFeatures]:
    """Run ``model`` on a batch of preprocessed images [B, 3, H, W]; one `ImageFeatures` per image."""
    parameter = next(model.parameters())
    output = model(pixel_values.to(parameter.device, parameter.dtype))
    return [
        ImageFeatures(feature_map=feature_map.float().cpu(), cls=cls.float().cpu(), input_size=tuple(pixel_values.shape[-2:]))
        for feature_map, cls in zip(output.feature_map, output.pooler_output)
    ]


def extract_features(model: SnDModel, processor: SnDImageProcessor, image: Any) -> ImageFeatures:
    """Features of one image (a path, PIL image or array; see `SnDImageProcessor`)."""
    return run_model(model, processor(images=image, return_tensors="pt")["pixel_values"])[0]


def preprocess_file(processor: SnDImageProcessor, item: ImageItem) -> torch.Tensor:
    """Decode one image and preprocess it: [3, H, W]. The decoded image is freed on return."""
    image = open_image(item.open(), source=item.source, max_pixels=processor.max_pixels)
    try:
        return processor(images=image, return_tensors="pt")["pixel_values"][0]
    except ValueError as error:  # e.g. a strip whose resized size exceeds the pixel cap
        raise ValueError(f"{item.source}: {error}") from None


def as_item(image: ImageItem | Path) -> ImageItem:
    """An image file as an item named after its stem; items as they are."""
    return image if isinstance(image, ImageItem) else ImageItem(image.stem, image, str(image))


def stream_features(
    model: SnDModel, processor: SnDImageProcessor, images: Iterable[ImageItem | Path], batch_size: int = 8
) -> Iterator[tuple[ImageItem, ImageFeatures]]:
    """Features of each image, in order, holding at most ``batch_size`` preprocessed images and one decoded
    image at a time. A batch also ends where the preprocessed size changes (other aspect ratio)."""
    for item, _, features in _stream_with_inputs(model, processor, images, batch_size):
        yield item, features


def _stream_with_inputs(
    model: SnDModel, processor: SnDImageProcessor, images: Iterable[ImageItem | Path], batch_size: int
) -> Iterator[tuple[ImageItem, torch.Tensor, ImageFeatures]]:
    """`stream_features`, with each image's preprocessed pixel values [3, H, W] (for its picture)."""
    batch: list[tuple[ImageItem, torch.Tensor]] = []
    for item in map(as_item, images):
        pixel_values = preprocess_file(processor, item)  # [3, H, W]
        if batch and (len(batch) == batch_size or batch[0][1].shape != pixel_values.shape):
            yield from _run_batch(model, batch)
            batch = []
        batch.append((item, pixel_values))
    if batch:
        yield from _run_batch(model, batch)


def _run_batch(model: SnDModel, batch: list[tuple[ImageItem, torch.Tensor]]) -> Iterator[tuple[ImageItem, torch.Tensor, ImageFeatures]]:
    features = run_model(model, torch.stack([pixel_values for _, pixel_values in batch]))
    return ((item, pixel_values, image_features) for (item, pixel_values), image_features in zip(batch, features))


def processed_image(processor: SnDImageProcessor, pixel_values: torch.Tensor) -> torch.Tensor:
    """The resized image a model saw, back in [0, 1]: ``pixel_values`` with the processor's normalisation undone.

    Args:
        pixel_values: one preprocessed image. [3, H, W]

    Returns:
        the image, channels last. [H, W, 3]
    """
    image = pixel_values.double()
    if processor.do_normalize:
        mean = torch.tensor(processor.image_mean, dtype=torch.float64)[:, None, None]
        std = torch.tensor(processor.image_std, dtype=torch.float64)[:, None, None]
        image = image * std + mean
    return image.permute(1, 2, 0)


def save_pca_picture(
    image: torch.Tensor, features: ImageFeatures, path: str | os.PathLike, model_name: str, pca_scale: int = 14
) -> Path:
    """One labelled picture: the processed image beside the PCA colours of its features (first three
    components as RGB, fitted on this image alone), ``pca_scale`` pixels per patch, titled with the model and grid.

    Args:
        image: the processed image in [0, 1] (``processed_image``). [H, W, 3]
        features: its features; ``input_size`` is (H, W).
        path: the PNG to write (atomically).
        model_name: the model as the run names it (Hub id or folder).
        pca_scale: picture pixels per patch; the image is resized (nearest) to the PCA's height.

    Returns:
        the written path.
    """
    _, grid_height, grid_width = features.feature_map.shape
    height, width = features.input_size
    patch = height // grid_height
    return save_panel(
        [image, pca_rgb(features.feature_map)],
        path,
        height=grid_height * pca_scale,
        title=f"{model_name}: {grid_height}x{grid_width} patches of {patch}x{patch} px; colours: the first 3 principal components of the features",
        labels=[f"image, {height}x{width} px", f"features, {grid_height}x{grid_width} grid"],
    )


def save_features(features: ImageFeatures, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write ``feature_map`` and ``cls`` to a safetensors file (temporary name, then renamed)."""
    path = Path(path)
    tensors = {"feature_map": features.feature_map.contiguous(), "cls": features.cls.contiguous()}
    info = {"input_size": json.dumps(list(features.input_size)), **(metadata or {})}
    atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata=info))
    return path


def load_model(source: str | os.PathLike, size: str | None, blending: bool | None, revision: str | None) -> SnDModel:
    options = {"revision": revision} if revision else {}
    return SnDModel.from_pretrained(source, size=size, blending=blending, **options).eval()


def extract_to_folder(
    model: SnDModel,
    processor: SnDImageProcessor,
    images: Iterable[ImageItem | Path],
    out: Path,
    metadata: dict[str, str],
    pca_scale: int = 14,
    batch_size: int = 8,
) -> Iterator[tuple[Path, Path, ImageFeatures]]:
    """Extract, then write features + PCA picture for each image, one batch at a time (a generator:
    nothing happens until it is iterated).

    Yields:
        per image: (safetensors path, PCA picture path, the features).
    """
    for item, pixel_values, features in _stream_with_inputs(model, processor, images, batch_size):
        feature_name, picture_name = output_names(item.image_id)
        feature_path = save_features(features, out / feature_name, metadata)
        image = processed_image(processor, pixel_values)
        picture = save_pca_picture(image, features, out / picture_name, metadata["model"], pca_scale)
        yield feature_path, picture, features


def open_run_folder(
    out: Path,
    command: str,
    model: SnDModel,
    processor: SnDImageProcessor,
    outputs: Sequence[str],
    model_name: str,
    overwrite: bool,
    replace_other_run: bool = False,
    identity: dict[str, Any] | None = None,
) -> tuple[RunFolder, dict[str, str]]:
    """The `RunFolder` for writing ``outputs`` (file names) into ``out``, and the safetensors metadata.

    ``identity``: what else than the model and preprocessing determines the outputs (a shards run's layout).
    """
    full_identity = {**run_identity(model, processor), **(identity or {})}
    info = {"model": model_name, "hidden_size": model.config.hidden_size, "patch_size": model.config.patch_size}
    folder = RunFolder(
        out, command, full_identity, list(outputs), overwrite=overwrite, replace_other_run=replace_other_run, info=info,
        resumable=command == "snd extract",
    )
    return folder, {"model": model_name, "weights_sha256": full_identity["weights_sha256"]}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``--dtype``: ``auto`` is bfloat16 on a CUDA device that supports it (features within bfloat16 rounding of
    float32's), float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return DTYPES[name]


def _check_arguments(args: argparse.Namespace) -> None:
    if bool(args.images) == bool(args.dataset):
        raise ValueError("snd extract takes image files or --dataset, not both or neither")
    if args.streaming and not args.dataset:
        raise ValueError("--streaming streams a --dataset; image files are read one by one anyway")
    if args.streaming and args.format != "shards":
        raise ValueError("--streaming writes --format shards: the images of a stream are not known in advance")


def _open_images(args: argparse.Namespace, state) -> FileImages | DatasetImages:
    """The run's images: checked files (headers read on the main process), or the dataset (opened on the main
    process first, so the others find its cache ready)."""
    if args.images:
        return FileImages(main_then_share(state, lambda: check_images(args.images, args.max_pixels)))
    with state.main_process_first():
        return open_image_dataset(args.dataset, args.split, args.streaming, args.image_column)


def _rows(features: Iterable[tuple[ImageItem, ImageFeatures]]) -> Iterator[tuple[str, ImageFeatures]]:
    return ((item.image_id, image_features) for item, image_features in features)


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    state = process_state()
    images = _open_images(args, state)
    processor = load_processor(args.model, args.shortest_edge, args.max_pixels)
    with state.main_process_first():  # one download of the weights, the other processes read its cache
        model = load_model(args.model, args.size, args.blending, args.revision)
    model.to(state.device, resolve_dtype(args.dtype, state.device))
    if args.format == "files":
        _extract_files(args, state, images, model, processor)
    elif images.streaming:
        _extract_stream(args, state, images, model, processor)
    else:
        _extract_shards(args, state, images, model, processor)
    return 0


def _extract_files(args, state, images: FileImages | DatasetImages, model, processor) -> None:
    """``--format files``: each process writes the files of its part of the images not written yet."""
    ids = images.ids
    out = args.out
    run_folder = contextlib.ExitStack()

    def claim() -> tuple[dict[str, str], list[int]]:
        outputs = [name for image_id in ids for name in output_names(image_id)]
        folder, metadata = open_run_folder(out, "snd extract", model, processor, outputs, str(args.model), args.overwrite)
        run_folder.enter_context(folder)
        missing = [i for i, image_id in enumerate(ids) if not all(folder.keeps(name) for name in output_names(image_id))]
        return metadata, missing

    metadata, pending = main_then_share(state, claim)
    with run_folder:
        if len(pending) < len(ids) and state.is_main_process:
            print(f"{out}: {len(ids) - len(pending)} of {len(ids)} images already extracted; extracting the other {len(pending)}")
        with state.split_between_processes(pending) as mine:
            progress = tqdm(
                images.items(mine), total=len(mine), desc="snd extract", unit="image", disable=not state.is_local_main_process
            )
            features = extract_to_folder(model, processor, progress, out, metadata, args.pca_scale, args.batch_size)
            for feature_path, picture, image_features in features:
                channels, height, width = image_features.feature_map.shape
                progress.write(f"{feature_path} ({channels}x{height}x{width})  {picture}")
        state.wait_for_everyone()


def _index_info(args, model, metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "format": "snd-hf feature shards",
        **metadata,
        "hidden_size": model.config.hidden_size,
        "patch_size": model.config.patch_size,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "shard_size": args.shard_size,
    }


def _extract_shards(args, state, images: FileImages | DatasetImages, model, processor) -> None:
    """``--format shards`` of files or an indexed dataset: shard k holds images k * size to (k + 1) * size, so
    which shards are missing does not depend on the number of processes; each process writes its part of them."""
    ids, size, out = images.ids, args.shard_size, args.out
    count = math.ceil(len(ids) / size)
    names = [f"shard-{k:05d}-of-{count:05d}.parquet" for k in range(count)]
    layout = {"format": "shards", "shard_size": size, "images": ids_fingerprint(ids)}
    run_folder = contextlib.ExitStack()

    def claim() -> tuple[dict[str, str], list[int]]:
        folder, metadata = open_run_folder(
            out, "snd extract", model, processor, [*names, INDEX_JSON, INDEX_PARQUET], str(args.model), args.overwrite, identity=layout
        )
        _refuse_other_shards(folder)
        run_folder.enter_context(folder)
        return metadata, [k for k, name in enumerate(names) if not folder.keeps(name)]

    metadata, pending = main_then_share(state, claim)
    with run_folder:
        if len(pending) < count and state.is_main_process:
            print(f"{out}: {count - len(pending)} of {count} shards already written; writing the other {len(pending)}")
        with state.split_between_processes(pending) as mine:
            for k in tqdm(mine, desc="snd extract", unit="shard", disable=not state.is_local_main_process):
                part = images.items(range(k * size, min(len(ids), (k + 1) * size)))
                rows = _rows(stream_features(model, processor, part, args.batch_size))
                written = write_shard(out / names[k], rows, metadata["weights_sha256"], args.batch_size)
                print(f"{out / names[k]} ({written} images)")
        state.wait_for_everyone()
        if state.is_main_process:
            index = write_index(out, names, _index_info(args, model, metadata))
            print(f"{out / INDEX_JSON}: {index['images']} images in {count} shards, {index['bytes_per_image']} bytes per image")


def _refuse_other_shards(folder: RunFolder) -> None:
    """Shards move in as they are finished (a stopped run resumes), so they never replace another run's shards:
    the folder would mix two runs until the end."""
    earlier = folder.read_manifest()
    if earlier is not None and earlier.get("identity") not in (None, folder.identity) and any(folder.folder.glob("shard-*.parquet")):
        raise FileExistsError(
            f"{folder.folder} holds the shards of another run ({earlier.get('info', {})}, see {folder.manifest_path});"
            " remove them or choose another output folder"
        )


def _extract_stream(args, state, images: DatasetImages, model, processor) -> None:
    """``--format shards`` of a streamed dataset: process r of W writes its part of the stream
    (``split_dataset_by_node``) as shards ``shard-r-of-W-k``; a rerun skips the rows of its complete shards."""
    size, out = args.shard_size, args.out
    rank, world = state.process_index, state.num_processes
    prefix = f"shard-{rank:05d}-of-{world:05d}-"
    layout = {"format": "shards", "shard_size": size, "dataset": args.dataset, "split": args.split,
              "image_column": images.image_column, "processes": world}  # fmt: skip
    run_folder = contextlib.ExitStack()

    def claim() -> dict[str, str]:
        folder, metadata = open_run_folder(
            out, "snd extract", model, processor, [INDEX_JSON, INDEX_PARQUET], str(args.model), args.overwrite, identity=layout
        )
        _refuse_other_shards(folder)
        run_folder.enter_context(folder)
        return metadata

    metadata = main_then_share(state, claim)
    with run_folder:
        done = 0  # this process's complete shards: all full but maybe the last, which ends its part of the stream
        while (out / f"{prefix}{done:05d}.parquet").is_file():
            done += 1
        finished = done > 0 and shard_rows(out / f"{prefix}{done - 1:05d}.parquet") < size
        if not finished:
            stream = stream_features(model, processor, images.stream(rank, world, skip=done * size), args.batch_size)
            features = _rows(stream)
            for k in itertools.count(done):
                first = next(features, None)
                if first is None:
                    break
                name = f"{prefix}{k:05d}.parquet"
                rows = itertools.chain([first], itertools.islice(features, size - 1))
                written = write_shard(out / name, rows, metadata["weights_sha256"], args.batch_size)
                print(f"{out / name} ({written} images)")
        state.wait_for_everyone()
        if state.is_main_process:
            names = sorted(path.name for path in out.glob(f"shard-*-of-{world:05d}-*.parquet"))
            index = write_index(out, names, _index_info(args, model, metadata))
            print(f"{out / INDEX_JSON}: {index['images']} images in {len(names)} shards, {index['bytes_per_image']} bytes per image")
