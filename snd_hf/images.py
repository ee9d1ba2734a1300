"""The one image decoder of snd-hf: files, PIL images and arrays to RGB, upright, at their true scale.

Every reader of pictures goes through here: `SnDImageProcessor` (paths, PIL images, arrays),
`snd extract`, `snd demo`, the scene readers (:mod:`snd_hf.data.frames`) and the evaluation
datasets. What it guarantees (tests in tests/test_images.py):

- **Bounded decoding.** :func:`open_image` reads the header first and refuses an image declaring more
  than ``max_pixels`` pixels (default :data:`MAX_PIXELS`, 2**27 = 134,217,728, about 11600x11600)
  before any pixel is decoded; Pillow's own decompression-bomb check (twice
  ``PIL.Image.MAX_IMAGE_PIXELS``, still enforced above a larger ``max_pixels``) and every decoding
  failure become :class:`ImageDecodeError` naming the file.
- **Upright.** The EXIF orientation tag (JPEG, PNG, WebP, TIFF) is applied, so a portrait photo is
  processed as it is displayed. Calibrated data (scene frames, evaluation sets) opt out with
  ``orient=False``: their intrinsics and labels refer to the stored pixel grid, as in COLMAP.
- **True scale.** 8-bit data stays ``uint8`` (exact, as SnD's PIL pipeline); 16-bit data (``I;16``,
  ``I;16B``, ``I;16L``, ``I``, ``uint16`` arrays) is divided by 65535 and float data (``F``,
  float arrays) must already lie in [0, 1]; both give ``float32`` in [0, 1]. Nothing is clipped
  to white or black silently: out-of-range values are an error.
- **Explicit alpha.** Transparent images (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, palette images
  with a transparent colour, 2- and 4-channel arrays) are composited over ``background`` (white by
  default, as transformers' ``convert_to_rgb``), not stripped of their alpha.
- **Every mode.** ``1``, ``L``, ``P``, ``RGB``, ``RGBX``, ``CMYK``, ``YCbCr``, ``HSV``, ``LAB`` become RGB
  through Pillow's conversions; a mode Pillow cannot convert is an error. ICC profiles are not
  applied (DINOv2 and SnD were trained on pixel values as stored). Multi-frame files give their
  first frame.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

MAX_PIXELS = 2**27  # 134,217,728: a 108 MP phone photo or a 100 MP medium-format frame passes
WHITE = (255, 255, 255)

_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_EXIF_ORIENTATION = 0x0112
# Float values within half an 8-bit step outside [0, 1] are rounding (resampling, colour conversions): clipped.
_FLOAT_TOLERANCE = 0.5 / 255


class ImageDecodeError(ValueError):
    """An image cannot be used: unreadable, too large, or of values that have no RGB meaning.

    Attributes:
        source: the file (or description) the image came from.
        reason: what is wrong, starting with a short kind (e.g. ``"too many pixels"``) and its detail
            in parentheses, so that readers can count skips by kind.
    """

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def _describe(file: str | os.PathLike | BinaryIO, source: str | None) -> str:
    if source is not None:
        return source
    return os.fspath(file) if isinstance(file, (str, os.PathLike)) else getattr(file, "name", "image data")


def _open_header(file: str | os.PathLike | BinaryIO, source: str, max_pixels: int) -> Image.Image:
    """`Image.open` (header only) with the pixel cap checked; the caller closes the image."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS; the cap below is the one that decides (the error at
            # twice that limit still stands).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file)
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {source}") from None
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(source, f"too many pixels ({error})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(source, f"unreadable image ({error})") from None
    if image.width * image.height > max_pixels:
        image.close()
        raise ImageDecodeError(
            source,
            f"too many pixels ({image.width}x{image.height} = {image.width * image.height:,} is over max_pixels ="
            f" {max_pixels:,}; raise max_pixels to decode it)",
        )
    return image


def probe_image(file: str | os.PathLike, *, source: str | None = None, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Check that ``file`` is an image Pillow can open within the pixel cap, reading only its header.

    Returns:
        (height, width) as stored (before EXIF orientation).

    Raises:
        FileNotFoundError: the file does not exist.
        ImageDecodeError: not an image, or more than ``max_pixels`` pixels.
    """
    source = _describe(file, source)
    image = _open_header(file, source, max_pixels)
    image.close()
    return image.height, image.width


def open_image(
    file: str | os.PathLike | BinaryIO,
    *,
    source: str | None = None,
    max_pixels: int = MAX_PIXELS,
    orient: bool = True,
) -> Image.Image:
    """Open and fully decode an image file (its first frame), within the pixel cap, upright.

    Args:
        file: a path or a binary file object.
        source: how errors name the image (default: the path, or the file object's name).
        max_pixels: refuse images declaring more pixels than this, before decoding them.
        orient: apply the EXIF orientation tag (``False`` for calibrated data whose cameras refer to the
            stored pixel grid).

    Returns:
        The decoded PIL image in its own mode (``I;16`` depth stays 16-bit); see :func:`to_rgb`.

    Raises:
        FileNotFoundError: the file does not exist.
        ImageDecodeError: not an image, truncated or corrupt, too many pixels, or unreadable EXIF data.
    """
    source = _describe(file, source)
    image = _open_header(file, source, max_pixels)
    try:
        with image:
            image.load()
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(source, f"too many pixels ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(source, f"unreadable image ({error})") from None
    return upright(image, source=source) if orient else image


def upright(image: Image.Image, *, source: str | None = None) -> Image.Image:
    """``image`` as displayed: its EXIF orientation applied (a new image), or ``image`` itself when it
    has no orientation to apply.

    Raises:
        ImageDecodeError: the EXIF data cannot be parsed.
    """
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) == 1:
            return image
        return ImageOps.exif_transpose(image)
    except Exception as error:  # Pillow raises many types on malformed EXIF blocks
        reason = f"unreadable EXIF data ({type(error).__name__}: {error}; strip the EXIF block)"
        raise ImageDecodeError("image" if source is None else source, reason) from None


def _composite(color: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Colour [H, W, 3] over ``background`` (0-255 RGB) with opacity alpha [H, W, 1]: uint8 when both
    are uint8 (rounded exactly, in integers), float32 in [0, 1] otherwise."""
    if color.dtype == np.uint8 and alpha.dtype == np.uint8:
        color, alpha = color.astype(np.uint32), alpha.astype(np.uint32)
        back = np.asarray(background, dtype=np.uint32)
        return ((color * alpha + back * (255 - alpha) + 127) // 255).astype(np.uint8)
    color, alpha = _to_unit_float(color), _to_unit_float(alpha)
    back = np.asarray(background, dtype=np.float32) / 255
    return color * alpha + back * (1 - alpha)


def _to_unit_float(values: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float [0, 1] values -> float32 in [0, 1]."""
    if values.dtype == np.uint8:
        return values.astype(np.float32) / 255
    if values.dtype == np.uint16:
        return values.astype(np.float32) / 65535
    return values.astype(np.float32, copy=False)


def _check_unit_range(values: np.ndarray, source: str, hint: str) -> np.ndarray:
    """Float values that must lie in [0, 1]: clip rounding-size excursions, refuse anything else."""
    if not np.isfinite(values).all():
        raise ImageDecodeError(source, "non-finite pixel values (NaN or inf)")
    low, high = float(values.min()), float(values.max())
    if low < -_FLOAT_TOLERANCE or high > 1 + _FLOAT_TOLERANCE:
        raise ImageDecodeError(source, f"float pixel values out of range ([{low:g}, {high:g}], expected [0, 1]; {hint})")
    return np.clip(values, 0.0, 1.0).astype(np.float32, copy=False)


def _channels(values: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """[H, W, C] with C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA), of uint8, uint16 or float32
    in [0, 1] -> [H, W, 3], uint8 (8-bit sources) or float32 in [0, 1]."""
    count = values.shape[-1]
    if count in (2, 4):
        color = values[..., : count - 1]
        values = _composite(np.repeat(color, 3, axis=-1) if count == 2 else color, values[..., -1:], background)
    elif count == 1:
        values = np.repeat(values, 3, axis=-1)
    return np.ascontiguousarray(values if values.dtype == np.uint8 else _to_unit_float(values))


def _pil_to_rgb(image: Image.Image, background: tuple[int, int, int], source: str) -> np.ndarray:
    mode = image.mode
    if mode in _UINT16_MODES:
        return _channels(np.asarray(image).astype(np.uint16)[..., None], background)
    if mode == "I":
        # 32-bit integer container: what 16-bit PNG/TIFF data decode to in older Pillow (and the mode
        # the scene readers accept for 16-bit maps). Values beyond 16 bits have no defined white.
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ImageDecodeError(source, f"32-bit integer pixel values out of the 16-bit range ([{low}, {high}])")
        return _channels(values.astype(np.uint16)[..., None], background)
    if mode == "F":
        values = _check_unit_range(np.asarray(image), source, "float images hold intensities in [0, 1]")
        return _channels(values[..., None], background)
    if mode == "P" and ("transparency" in image.info or image.palette.mode == "RGBA"):
        mode, image = "RGBA", image.convert("RGBA")
    if mode in _ALPHA_MODES:
        if mode in ("PA", "RGBa", "La"):  # palette or premultiplied alpha: to plain colour + alpha first
            image = image.convert("LA" if mode == "La" else "RGBA")
        return _channels(np.asarray(image), background)
    if mode != "RGB":
        try:
            image = image.convert("RGB")
        except ValueError as error:
            raise ImageDecodeError(source, f"unsupported image mode {mode!r} ({error})") from None
    return np.asarray(image)


def _array_to_rgb(
    values: np.ndarray,
    background: tuple[int, int, int],
    float_range: float,
    channels: Literal["first", "last"] | None,
    source: str,
) -> np.ndarray:
    if values.ndim == 2:
        values = values[..., None]
    elif values.ndim == 3:
        counts = (1, 2, 3, 4)
        if channels is None:
            # transformers' preference when both ends could be channels: first.
            channels = "first" if values.shape[0] in counts else "last" if values.shape[-1] in counts else None
        if channels is None or values.shape[0 if channels == "first" else -1] not in counts:
            raise ImageDecodeError(source, f"array of shape {values.shape} has no channel axis of 1, 2, 3 or 4 entries")
        if channels == "first":
            values = np.moveaxis(values, 0, -1)
    else:
        raise ImageDecodeError(source, f"array of shape {values.shape}: expected [H, W], [H, W, C] or [C, H, W]")
    if values.dtype == np.bool_:
        values = values.astype(np.uint8) * 255
    elif values.dtype.kind == "f":
        if float_range > 1 and values.size and 0 < values.max() <= 1:
            # Nearly black if read as 0-255: almost surely values already scaled to [0, 1].
            raise ImageDecodeError(
                source,
                f"float values all within [0, 1] but read as [0, {float_range:g}] (already scaled? with"
                " SnDImageProcessor pass do_rescale=False)",
            )
        hint = f"pass values in [0, {float_range:g}]"
        values = _check_unit_range(values.astype(np.float32) / np.float32(float_range), source, hint)
    elif values.dtype not in (np.uint8, np.uint16):
        raise ImageDecodeError(
            source, f"integer pixel type {values.dtype} has no defined white: convert to uint8 (0-255) or uint16 (0-65535)"
        )
    return _channels(values, background)


def to_rgb(
    image: Image.Image | np.ndarray | torch.Tensor,
    *,
    background: tuple[int, int, int] = WHITE,
    float_range: float = 1.0,
    channels: Literal["first", "last"] | None = None,
    source: str | None = None,
) -> np.ndarray:
    """Any decoded image as RGB pixels at their true scale (see the module docstring).

    Args:
        image: a PIL image of any mode, or an array / tensor [H, W], [H, W, C] or [C, H, W] with C in
            1-4 (grey, grey + alpha, RGB, RGBA) of dtype uint8, uint16, bool or float.
        background: RGB (0-255) that transparent pixels are composited over.
        float_range: float arrays hold values in [0, ``float_range``] (1 by default; transformers'
            processors take 255 when they rescale).
        channels: where an array's channel axis is; by default the first axis if it has 1-4 entries,
            else the last (as transformers infers it).
        source: how errors name the image.

    Returns:
        [H, W, 3]: ``uint8`` for 8-bit sources, else ``float32`` in [0, 1].

    Raises:
        ImageDecodeError: values without RGB meaning (out of range, NaN, integer types other than
            uint8/uint16, modes Pillow cannot convert) or shapes that are not an image.
    """
    source = "image" if source is None else source
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, background, source)
    # Not imported here: `snd extract --help` reads MAX_PIXELS without torch; a tensor implies torch is loaded.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = (image.float() if image.dtype == torch.bfloat16 else image).numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a PIL image, numpy array or torch tensor, got {type(image).__name__}")
    return _array_to_rgb(image, background, float_range, channels, source)


def load_rgb(
    file: str | os.PathLike | BinaryIO,
    *,
    source: str | None = None,
    max_pixels: int = MAX_PIXELS,
    orient: bool = True,
    background: tuple[int, int, int] = WHITE,
) -> np.ndarray:
    """:func:`open_image` then :func:`to_rgb`: [H, W, 3], ``uint8`` for 8-bit files, else ``float32`` in [0, 1]."""
    source = _describe(file, source)
    return to_rgb(open_image(file, source=source, max_pixels=max_pixels, orient=orient), background=background, source=source)


def rgb_to_float(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] from :func:`to_rgb` -> float32 in [0, 1] (``uint8`` divided by 255)."""
    return _to_unit_float(rgb)


__all__ = [
    "MAX_PIXELS",
    "WHITE",
    "ImageDecodeError",
    "load_rgb",
    "open_image",
    "probe_image",
    "rgb_to_float",
    "to_rgb",
    "upright",
]


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
