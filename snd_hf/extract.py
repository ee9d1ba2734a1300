"""`snd extract`: dense SnD features of images, saved as safetensors with a PCA picture beside each.

    snd extract photos/*.jpg --model david-shavin/SnD --size small --out features/
    snd extract room.png --model path/to/native-checkpoint --out features/

For every image ``{stem}.png`` the output folder gets ``{stem}.safetensors`` (``feature_map``
[C, h, w] and ``cls`` [C], float32, with the model, its weights' SHA-256 and the input size in the
metadata) and ``{stem}_pca.png`` (the first three principal components as colours, one block of 14x14
pixels per patch, so it lines up with the processed image).

Images are decoded by :mod:`snd_hf.images` (EXIF orientation, 16-bit, alpha, a pixel cap) and streamed:
every file's header is checked before the model loads, then each image is decoded, preprocessed, run
(``--batch-size`` at a time) and written before the next batch is decoded, so memory does not grow with
the number of images. The output folder is a :class:`snd_hf.run_folder.RunFolder`: ``snd_run.json``
records the model and preprocessing, a re-run with another model is refused unless ``--overwrite``,
and a lock keeps two runs from writing into it at once.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .files import atomic_write
from .image_processing_snd import SnDImageProcessor
from .images import MAX_PIXELS, open_image, probe_image
from .loading import weights_hash
from .modeling_snd import SnDModel
from .run_folder import RunFolder
from .visualization import pca_rgb, save_png

PROCESSOR_CONFIG = "preprocessor_config.json"
# Processor settings that do not change any pixel value: left out of a run's identity.
NOT_IN_IDENTITY = ("max_pixels", "image_processor_type", "processor_class")


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


def check_images(paths: Sequence[str | os.PathLike], max_pixels: int = MAX_PIXELS) -> list[Path]:
    """Check every image before any work starts, reading only the file headers.

    Every image is checked, so one run names all the bad ones.

    Returns:
        the paths, as `Path`.

    Raises:
        FileNotFoundError: naming a missing file, when it is the only bad one.
        snd_hf.images.ImageDecodeError: naming a file that is not an image or declares more than
            ``max_pixels`` pixels, when it is the only bad one.
        ValueError: two images that would write the same output name, or a folder among them; or
            naming every bad file and what is wrong with each, when there are several.
    """
    stems: dict[str, Path] = {}
    for path in map(Path, paths):
        if path.stem in stems:
            raise ValueError(f"images {stems[path.stem]} and {path} would both write {path.stem}.safetensors")
        stems[path.stem] = path
    problems: list[Exception] = []
    for path in stems.values():
        if path.is_dir():
            raise ValueError(f"{path} is a folder, not an image: pass its files (e.g. {path / '*.jpg'})")
        try:
            if not path.is_file():
                raise FileNotFoundError(f"image not found: {path}")
            probe_image(path, max_pixels=max_pixels)
        except (OSError, ValueError) as error:
            problems.append(error)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ValueError(f"{len(problems)} of {len(stems)} images cannot be used: " + "; ".join(map(str, problems)))
    return list(stems.values())


def output_names(paths: Iterable[Path]) -> list[str]:
    """The files a run writes for ``paths``: ``{stem}.safetensors`` and ``{stem}_pca.png`` each."""
    return [name for path in paths for name in (f"{path.stem}.safetensors", f"{path.stem}_pca.png")]


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
    """What determines the features a run writes: the weights and every pixel-changing processor setting."""
    settings = {key: value for key, value in processor.to_dict().items() if key not in NOT_IN_IDENTITY}
    return {"weights_sha256": weights_hash(model), "processor": settings}


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


def preprocess_file(processor: SnDImageProcessor, path: Path) -> torch.Tensor:
    """Decode one file and preprocess it: [3, H, W]. The decoded image is freed on return."""
    image = open_image(path, max_pixels=processor.max_pixels)
    return processor(images=image, return_tensors="pt")["pixel_values"][0]


def stream_features(
    model: SnDModel, processor: SnDImageProcessor, paths: Iterable[Path], batch_size: int = 8
) -> Iterator[tuple[Path, ImageFeatures]]:
    """Features of each image, in order, holding at most ``batch_size`` preprocessed images and one decoded
    image at a time. A batch also ends where the preprocessed size changes (other aspect ratio)."""
    batch: list[tuple[Path, torch.Tensor]] = []
    for path in paths:
        pixel_values = preprocess_file(processor, path)  # [3, H, W]
        if batch and (len(batch) == batch_size or batch[0][1].shape != pixel_values.shape):
            yield from zip([p for p, _ in batch], run_model(model, torch.stack([v for _, v in batch])))
            batch = []
        batch.append((path, pixel_values))
    if batch:
        yield from zip([p for p, _ in batch], run_model(model, torch.stack([v for _, v in batch])))


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
    paths: Iterable[Path],
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
    for path, features in stream_features(model, processor, paths, batch_size):
        feature_path = save_features(features, out / f"{path.stem}.safetensors", metadata)
        picture = save_png(pca_rgb(features.feature_map), out / f"{path.stem}_pca.png", scale=pca_scale)
        yield feature_path, picture, features


def open_run_folder(
    out: Path,
    command: str,
    model: SnDModel,
    processor: SnDImageProcessor,
    paths: Sequence[Path],
    model_name: str,
    overwrite: bool,
    replace_other_run: bool = False,
    extra_outputs: Sequence[str] = (),
) -> tuple[RunFolder, dict[str, str]]:
    """The `RunFolder` for writing features of ``paths`` (and ``extra_outputs``) into ``out``, and the
    safetensors metadata."""
    identity = run_identity(model, processor)
    info = {"model": model_name, "hidden_size": model.config.hidden_size, "patch_size": model.config.patch_size}
    outputs = output_names(paths) + list(extra_outputs)
    folder = RunFolder(out, command, identity, outputs, overwrite=overwrite, replace_other_run=replace_other_run, info=info)
    return folder, {"model": model_name, "weights_sha256": identity["weights_sha256"]}


def run(args: argparse.Namespace) -> int:
    paths = check_images(args.images, args.max_pixels)
    processor = load_processor(args.model, args.shortest_edge, args.max_pixels)
    model = load_model(args.model, args.size, args.blending, args.revision)
    folder, metadata = open_run_folder(args.out, "snd extract", model, processor, paths, str(args.model), args.overwrite)
    with folder:
        progress = tqdm(paths, desc="snd extract", unit="image")
        for feature_path, picture, features in extract_to_folder(
            model, processor, progress, args.out, metadata, args.pca_scale, args.batch_size
        ):
            channels, height, width = features.feature_map.shape
            progress.write(f"{feature_path} ({channels}x{height}x{width})  {picture}")
    return 0
