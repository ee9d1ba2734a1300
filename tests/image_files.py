"""Image files written byte by byte, independently of Pillow: 16-bit PNGs and PNGs declaring any size."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, rows: Iterable[bytes]) -> bytes:
    """A PNG written by hand (no Pillow): ``rows`` yields each row's raw bytes (filter 0 is prepended)."""
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(b"\0" + row) for row in rows) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def png16(array: np.ndarray) -> bytes:
    """16-bit grey [H, W] or RGB [H, W, 3] uint16 as a big-endian PNG (Pillow cannot write 16-bit RGB)."""
    color_type = 0 if array.ndim == 2 else 2
    return png_bytes(array.shape[1], array.shape[0], 16, color_type, (row.astype(">u2").tobytes() for row in array))
