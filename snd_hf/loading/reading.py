"""Reading a checkpoint file so that it can never run code: torch files with weights_only=True
(zip archives CRC-checked, which torch.load does not), safetensors, every tensor finite."""

from __future__ import annotations

import os
import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors

from ..files import restore_interrupted
from .errors import CheckpointError

CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def _checkpoint_kind(path: Path) -> str:
    """"zip" (torch.save), "pickle" (legacy torch.save) or "safetensors", from the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000:
        return "safetensors"
    raise CheckpointError(
        f"{path} is not a PyTorch (.pth/.pt) or safetensors checkpoint (it starts with {head[:8]!r}); give the"
        " weights file itself"
    )


def named_tensors(value: object, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted path, tensor) of every tensor inside nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from named_tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from named_tensors(item, f"{prefix}.{index}" if prefix else str(index))


_STORAGE_ENTRY = re.compile(r"/data/\d+\Z")  # where torch.save puts each storage's bytes
_verified: set[tuple] = set()  # archives whose CRCs passed in this process: (path, inode, size, mtime)


def _storage_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of `tensor`'s whole storage (without a copy when it is in CPU memory)."""
    storage = tensor.untyped_storage()
    return memoryview(torch.empty(0, dtype=torch.uint8).set_(storage.cpu() if storage.device.type != "cpu" else storage).numpy())


def _verify_archive(path: Path, loaded: object) -> None:
    """Check the CRC-32 of every entry of a torch zip archive, which torch.load does not.

    Storage entries are checked against the storages just loaded (a storage's bytes match the CRC its
    entry records unless either was corrupted), so the file is not read a second time and the bad
    entry is named with the tensors it holds; the small entries (pickle, version) are read by zipfile,
    which checks them. Done once per file version per process.
    """
    status = path.stat()
    version = (str(path.resolve()), status.st_ino, status.st_size, status.st_mtime_ns)
    if version in _verified:
        return
    storages: dict[int, tuple[int, list[str]]] = {}
    for name, tensor in named_tensors(loaded):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in storages:
            storages[pointer] = (zlib.crc32(_storage_bytes(tensor)), [])
        storages[pointer][1].append(name)
    loaded_crcs = {crc for crc, _ in storages.values()}
    try:
        with zipfile.ZipFile(path) as archive:
            recorded = {info.filename: info.CRC for info in archive.infolist() if _STORAGE_ENTRY.search(info.filename)}
            for info in archive.infolist():
                # small entries, and any storage no loaded tensor matches: zipfile's read checks the CRC
                if info.filename not in recorded or info.CRC not in loaded_crcs:
                    archive.read(info.filename)
    except zipfile.BadZipFile as error:
        entry = re.search(r"'([^']*)'", str(error))
        holding = [names for crc, names in storages.values() if crc not in set(recorded.values())]
        detail = f"archive entry {entry.group(1)!r}" if entry else str(error)
        if holding:
            detail += f" (holding {', '.join(name for names in holding for name in names)})"
        raise CheckpointError(
            f"{path} is corrupt: {detail} fails its CRC-32 check; download or copy the file again"
        ) from None
    _verified.add(version)


def read_checkpoint_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> object:
    """Load a .safetensors file, or a torch file with weights_only=True; errors name the file.

    The format is read from the file's first bytes, not its suffix. A pickle that needs more than
    tensors and containers is refused (`CheckpointError`) and nothing in it runs; a file that is not a
    checkpoint, a truncated file and a torch zip archive with a bad CRC-32 (named by entry and tensor)
    raise `CheckpointError` too. A file that a crash left moved aside to `.<name>.old` is restored first
    (`snd_hf.files.restore_interrupted`).
    """
    path = Path(path)
    restore_interrupted(path)
    if not path.is_file():
        hint = " (it is a folder: load it with SnDModel.from_pretrained)" if path.is_dir() else ""
        raise FileNotFoundError(f"checkpoint not found: {path}{hint}")
    kind = _checkpoint_kind(path)
    try:
        if kind == "safetensors":
            return load_safetensors(str(path), device=str(map_location))
        loaded = torch.load(path, map_location=map_location, weights_only=True)
        if kind == "zip":
            _verify_archive(path, loaded)
        return loaded
    except CheckpointError:
        raise
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refused to load {path}: it is not a plain tensor checkpoint (weights_only=True rejected it,"
            f" nothing was executed): {str(error).splitlines()[0]}"
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, SafetensorError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or corrupt ({error!r})") from error


def check_finite(state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise a CheckpointError naming the first tensor (in order) holding NaN or inf.

    A single NaN weight does not always surface as NaN features (CPU SDPA can return finite, wrong
    values), so it is refused at load time.
    """
    for key, tensor in state_dict.items():
        if tensor.is_meta or tensor.numel() == 0 or not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        # min and max propagate NaN and reach any inf: two reductions, no temporary the size of the
        # tensor (isfinite(tensor).all() is ~10x slower on a ViT-B).
        extremes = torch.view_as_real(tensor) if tensor.is_complex() else tensor
        if not bool(torch.isfinite(torch.stack(torch.aminmax(extremes))).all()):
            count = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{what}: {key} holds {count} non-finite value(s) (NaN/inf) of {tensor.numel()}; the weights are"
                " corrupt or come from a diverged run: use another checkpoint"
            )
