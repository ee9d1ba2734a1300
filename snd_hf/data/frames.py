"""Decoding of one frame's files (image, instance mask, depth, normals, semantics) into tensors.

Shared by the folder reader (:mod:`snd_hf.data.scannetpp`) and the Hugging Face ``datasets``
reader (:mod:`snd_hf.data.hf`), which store the same PNG/JPEG files. Every decoder checks the
image mode and size and raises :class:`FrameReadError` naming the file, so that nothing is
silently zero-filled. Resizing: images bicubic, everything else nearest.

File conventions (the ones :mod:`snd_hf.data.synthetic` writes):

- image: 8-bit RGB.
- instance mask: 8- or 16-bit single channel (``L``, ``P``, ``I;16``, ``I``), one id per instance.
- depth: 16-bit single channel, z-depth in millimetres, 0 = invalid.
- normals: 8-bit RGB, camera-frame unit normal ``n = rgb / 127.5 - 1``; ``(0, 0, 0)`` = invalid.
- semantics: 8- or 16-bit single channel class ids.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from snd_hf import images

_LABEL_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I")
_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I")


class FrameReadError(ValueError):
    """A frame file is missing, unreadable or malformed; ``path`` names it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    @property
    def kind(self) -> str:
        """The reason without its parenthesised detail (e.g. ``"unreadable image"``): how skips are counted."""
        return self.reason.split(" (")[0]


def open_image(path, source: str | None = None, max_pixels: int = images.MAX_PIXELS) -> Image.Image:
    """Open and fully read an image (a path or a file object; ``source`` names it in errors) with
    :func:`snd_hf.images.open_image`, turning every failure into :class:`FrameReadError` (kinds such as
    ``"unreadable image"`` or ``"too many pixels"``, refused before decoding)."""
    source = str(path) if source is None else source
    try:
        # orient=False: a frame's intrinsics and maps refer to the stored pixel grid (COLMAP, nerfstudio).
        return images.open_image(path, source=source, max_pixels=max_pixels, orient=False)
    except FileNotFoundError:
        raise FrameReadError(source, "file not found") from None
    except images.ImageDecodeError as error:
        raise FrameReadError(source, error.reason) from None


def _check_mode(image: Image.Image, modes: tuple[str, ...], source: str) -> None:
    if image.mode not in modes:
        raise FrameReadError(source, f"image mode must be one of {list(modes)}, got {image.mode!r}")


def _check_size(image: Image.Image, expected: tuple[int, int] | None, source: str) -> None:
    if expected is not None and (image.height, image.width) != tuple(expected):
        raise FrameReadError(
            source, f"size must be {expected[0]}x{expected[1]} (HxW, the frame's image size), got {image.height}x{image.width}"
        )


def _nearest(array: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Nearest-neighbour resize sampling at pixel centres (PIL's convention). [H, W, ...] -> [h, w, ...]"""
    if size is None or tuple(size) == array.shape[:2]:
        return array
    height, width = array.shape[:2]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.int64), width - 1)
    return array[rows[:, None], cols[None, :]]


def decode_image(image: Image.Image, size: tuple[int, int] | None, source: str) -> torch.Tensor:
    """RGB image → float tensor in [0, 1], resized bicubically to ``size`` (H, W). Returns [3, H, W]."""
    _check_mode(image, ("RGB",), source)
    if size is not None and (image.height, image.width) != tuple(size):
        image = image.resize((size[1], size[0]), Image.BICUBIC)
    # numpy does the layout change: torch's intra-op thread pool makes small copies slow on busy CPUs.
    return torch.from_numpy(np.ascontiguousarray((np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)))


def decode_labels(
    image: Image.Image, size: tuple[int, int] | None, source: str, expected_size: tuple[int, int] | None
) -> torch.Tensor:
    """Single-channel id map (instances or semantics) → int64, nearest resize. Returns [H, W]."""
    _check_mode(image, _LABEL_MODES, source)
    _check_size(image, expected_size, source)
    return torch.from_numpy(_nearest(np.asarray(image).astype(np.int64), size))


def decode_depth(
    image: Image.Image, size: tuple[int, int] | None, source: str, expected_size: tuple[int, int] | None
) -> torch.Tensor:
    """16-bit millimetre depth → metres (0 = invalid), nearest resize. Returns [H, W]."""
    _check_mode(image, _DEPTH_MODES, source)
    _check_size(image, expected_size, source)
    return torch.from_numpy(_nearest(np.asarray(image).astype(np.float32) / 1000.0, size))


def decode_normals(
    image: Image.Image, size: tuple[int, int] | None, source: str, expected_size: tuple[int, int] | None
) -> torch.Tensor:
    """8-bit RGB normals → unit vectors (0 where invalid), nearest resize. Returns [3, H, W]."""
    _check_mode(image, ("RGB",), source)
    _check_size(image, expected_size, source)
    encoded = _nearest(np.asarray(image), size)
    normals = encoded.astype(np.float32) / 127.5 - 1.0
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    normals = np.where(encoded.any(axis=-1, keepdims=True), normals / np.maximum(length, 1e-12), 0.0).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(normals.transpose(2, 0, 1)))


_DECODERS = {"mask": decode_labels, "semantics": decode_labels, "depth": decode_depth, "normals": decode_normals}


def decode_view(files: dict[str, tuple[Image.Image, str]], size: tuple[int, int] | None) -> dict[str, torch.Tensor]:
    """Decode one frame's files, checking every map against the image's size.

    Args:
        files: ``name -> (PIL image, source path for errors)``; ``image`` is required, the others
            are any of ``mask``, ``depth``, ``normals``, ``semantics``.
        size: output (H, W), or None for the native size.

    Returns:
        ``image`` [3, H, W], ``mask`` [H, W], ``depth`` [H, W], ``normals`` [3, H, W],
        ``semantics`` [H, W], for the names given.
    """
    image, source = files["image"]
    native = (image.height, image.width)
    view = {"image": decode_image(image, size, source)}
    for name, (encoded, path) in files.items():
        if name != "image":
            view[name] = _DECODERS[name](encoded, size, path, native)
    return view
