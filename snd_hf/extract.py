"""`snd extract`: dense SnD features of images, saved as safetensors with a PCA picture beside each.

    snd extract photos/*.jpg --model david-shavin/SnD --size small --out features/
    snd extract room.png --model path/to/native-checkpoint --out features/

For every image ``{stem}.png`` the output folder gets ``{stem}.safetensors`` (``feature_map``
[C, h, w] and ``cls`` [C], float32, with the model and input size in the metadata) and
``{stem}_pca.png`` (the first three principal components as colours, one block of 14x14 pixels per
patch, so it lines up with the processed image).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .files import atomic_write
from .image_processing_snd import SnDImageProcessor
from .modeling_snd import SnDModel
from .visualization import pca_rgb, save_png

PROCESSOR_CONFIG = "preprocessor_config.json"


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


def parse_bool(text: str) -> bool:
    choices = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in choices:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return choices[text.lower()]


def add_model_arguments(parser: argparse.ArgumentParser, model_required: bool, shortest_edge: int) -> None:
    """Options choosing the model and its preprocessing, shared by `snd extract` and `snd demo`."""
    parser.add_argument(
        "--model",
        required=model_required,
        help="Hub repo id or local folder (native checkpoint, or laid out like david-shavin/SnD)",
    )
    parser.add_argument("--size", choices=["small", "base"], help="published variant size (default small)")
    parser.add_argument("--blending", type=parse_bool, help="published variant: true (default) or false")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    parser.add_argument(
        "--shortest-edge", type=int, default=shortest_edge, help="resize the shortest image edge to this many pixels"
    )
    parser.add_argument("--pca-scale", type=int, default=14, help="PCA picture pixels per patch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, help="image files (anything pillow reads)")
    add_model_arguments(parser, model_required=True, shortest_edge=448)
    parser.add_argument("--out", type=Path, required=True, help="output folder")


def load_images(paths: Sequence[str | os.PathLike]) -> list[Image.Image]:
    """Open and decode every image as RGB, checking all of them before any work starts.

    Raises:
        FileNotFoundError: naming the first missing file.
        ValueError: naming an unreadable file, or two images that would write the same output name.
    """
    stems: dict[str, Path] = {}
    for path in map(Path, paths):
        if path.stem in stems:
            raise ValueError(f"images {stems[path.stem]} and {path} would both write {path.stem}.safetensors")
        stems[path.stem] = path
    images = []
    for path in stems.values():
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"cannot read image {path}: {error}") from error
    return images


def load_processor(model_source: str | os.PathLike, shortest_edge: int) -> SnDImageProcessor:
    """The checkpoint's own preprocessing when a local folder holds one, the defaults otherwise;
    the shortest edge is always ``shortest_edge``."""
    if shortest_edge < 14:
        raise ValueError(f"shortest_edge must be at least one patch (14), got {shortest_edge}")
    folder = Path(model_source)
    if (folder / PROCESSOR_CONFIG).is_file():
        return SnDImageProcessor.from_pretrained(folder, size={"shortest_edge": shortest_edge})
    return SnDImageProcessor(size={"shortest_edge": shortest_edge})


@torch.no_grad()
def extract_features(model: SnDModel, processor: SnDImageProcessor, image: Image.Image) -> ImageFeatures:
    """Run ``model`` on one preprocessed image."""
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]  # [1, 3, H, W]
    parameter = next(model.parameters())
    output = model(pixel_values.to(parameter.device, parameter.dtype))
    return ImageFeatures(
        feature_map=output.feature_map[0].float().cpu(),
        cls=output.pooler_output[0].float().cpu(),
        input_size=tuple(pixel_values.shape[-2:]),
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
    paths: Sequence[Path],
    images: Sequence[Image.Image],
    out: Path,
    model_name: str,
    pca_scale: int = 14,
) -> list[tuple[Path, Path, ImageFeatures]]:
    """Extract and write features + PCA picture for each image.

    Returns:
        per image: (safetensors path, PCA picture path, the features).
    """
    written = []
    for path, image in tqdm(list(zip(paths, images)), desc="snd extract", unit="image"):
        features = extract_features(model, processor, image)
        feature_path = save_features(features, out / f"{path.stem}.safetensors", {"model": model_name})
        picture = save_png(pca_rgb(features.feature_map), out / f"{path.stem}_pca.png", scale=pca_scale)
        written.append((feature_path, picture, features))
    return written


def run(args: argparse.Namespace) -> int:
    images = load_images(args.images)
    processor = load_processor(args.model, args.shortest_edge)
    model = load_model(args.model, args.size, args.blending, args.revision)
    written = extract_to_folder(model, processor, args.images, images, args.out, str(args.model), args.pca_scale)
    for feature_path, picture, features in written:
        channels, height, width = features.feature_map.shape
        print(f"{feature_path} ({channels}x{height}x{width})  {picture}")
    return 0
