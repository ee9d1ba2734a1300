"""File-system helpers: nothing the package writes is ever left half-written, and what an interrupted
run leaves behind is cleared (temporaries) or put back (a moved-aside destination) by the next one;
data pickles are read without running code from them (:func:`load_data_pickle`).

Every writer in snd-hf goes through :func:`atomic_write` for one file, or builds a file or folder at
:func:`make_temporary` and moves it in with :func:`replace_path`. Temporaries are named
``.<name>~snd-tmp~<host>~<pid>~<random>`` beside their destination, so a later run can tell its own
stale ones (same host, process gone) from a live concurrent writer's, and never touches anything else.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import logging
import os
import pickle
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

TEMPORARY_TAG = "~snd-tmp~"
# Errors of a write that ran out of room: disk full, `ulimit -f` (EFBIG), quota.
_NO_ROOM_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
# The same failures as reported by writers that do not raise OSError (torch's zip writer, safetensors).
_NO_ROOM_MARKERS = ("PytorchStreamWriter", "inline_container.cc", "No space left", "File too large", "FileTooLarge", "StorageFull")


def default_permissions(path: Path) -> None:
    """Give `path` (and, for a directory, everything in it) the permissions a plain create would, not
    the private 0600/0700 of temporary files."""
    umask = os.umask(0)
    os.umask(umask)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


def _host() -> str:
    return socket.gethostname().replace("~", "-") or "localhost"


def _process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (when unsure, it does: nothing live is ever removed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of one of our temporaries, from its name; None for any other name."""
    if not name.startswith(".") or TEMPORARY_TAG not in name:
        return None
    parts = name.rpartition(TEMPORARY_TAG)[2].split("~")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


_swept: set[Path] = set()


def clean_stale_temporaries(directory: Path, again: bool = False) -> list[Path]:
    """Remove the temporaries in `directory` that an interrupted snd-hf process on this host left behind.

    Only names of our own pattern (module docstring) whose process no longer exists are removed, each
    with a logged message; a concurrent writer's temporaries (process alive, or another host) stay.
    Each directory is swept once per process, unless `again`. Returns the removed paths.
    """
    directory = Path(directory)
    key = directory.resolve()
    if (key in _swept and not again) or not directory.is_dir():
        return []
    _swept.add(key)
    removed = []
    host = _host()
    for entry in os.scandir(directory):
        owner = _owner(entry.name)
        if owner is None or owner[0] != host or _process_alive(owner[1]):
            continue
        path = directory / entry.name
        try:
            _remove(path)
        except OSError:  # gone meanwhile, or not ours to remove after all: leave it
            continue
        removed.append(path)
        logger.warning("removed %s, a temporary left by an interrupted snd-hf run (process %s)", path, owner[1])
    return removed


def old_copy(destination: Path) -> Path:
    """Where :func:`replace_path` keeps the previous `destination` while it swaps in the new one."""
    return destination.with_name(f".{destination.name}.old")


def restore_interrupted(destination: Path) -> bool:
    """Put back a `destination` that a crash left moved aside (missing, with its ``.<name>.old`` copy
    present: the crash came between :func:`replace_path`'s two renames). Logs what it did.

    Returns:
        True if `destination` was restored.
    """
    destination = Path(destination)
    old = old_copy(destination)
    if os.path.lexists(destination) or not os.path.lexists(old):
        return False
    old.rename(destination)
    logger.warning("restored %s from %s, left by an interrupted write", destination, old.name)
    return True


# Checks every destination passes before anything is written to it: an open run folder
# (`snd_hf.run_folder.RunFolder`) registers one to refuse files it does not own, whichever code
# writes them.
destination_checks: list[Callable[[Path], None]] = []
# Takers of finished temporaries: `take(temporary, destination)` returning True keeps the temporary
# to move it in later itself (an open run folder commits its run's files together at its end).
deferred_moves: list[Callable[[Path, Path], bool]] = []


def _deferred(temporary: Path, destination: Path) -> bool:
    return any(take(temporary, destination) for take in deferred_moves)


def is_temporary(path: Path) -> bool:
    """Whether `path` is, or lies inside, one of our temporaries (module docstring)."""
    return any(_owner(part) is not None for part in Path(path).parts)


def destination_of(path: Path) -> Path:
    """The destination one of our temporaries stands for (``path`` itself for any other name)."""
    path = Path(path)
    return path.with_name(path.name[1:].rpartition(TEMPORARY_TAG)[0]) if _owner(path.name) is not None else path


def live_temporaries(destination: Path) -> list[Path]:
    """The temporaries beside ``destination`` that stand for it and whose writer may still be running
    (this host's live processes, or another host's): how the other processes of a distributed run find
    the folder their main process made."""
    destination, host = Path(destination), _host()
    if not destination.parent.is_dir():
        return []
    found = []
    for entry in os.scandir(destination.parent):
        owner = _owner(entry.name)
        if owner is not None and destination_of(Path(entry.name)).name == destination.name:
            if owner[0] != host or _process_alive(owner[1]):
                found.append(destination.parent / entry.name)
    return sorted(found)


def make_temporary(destination: Path, directory: bool = False) -> Path:
    """Create an empty temporary file or folder beside `destination`, named so a later run can clean it
    if this process dies (module docstring); stale temporaries and an interrupted replacement of
    `destination` are dealt with first, after the open run folders' checks (`destination_checks`)."""
    destination = Path(destination)
    for check in destination_checks:
        check(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(destination.parent)
    restore_interrupted(destination)
    prefix = f".{destination.name}{TEMPORARY_TAG}{_host()}~{os.getpid()}~"
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=destination.parent))
    handle, temporary = tempfile.mkstemp(prefix=prefix, dir=destination.parent)
    os.close(handle)
    return Path(temporary)


def _out_of_room(error: BaseException) -> bool:
    chain = [error, error.__cause__, error.__context__]
    if any(isinstance(item, OSError) and item.errno in _NO_ROOM_ERRNOS for item in chain):
        return True
    return not isinstance(error, OSError) and any(marker in str(error) for marker in _NO_ROOM_MARKERS)


def _size_limit() -> str:
    try:
        import resource  # POSIX only
    except ImportError:
        return ""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return "" if soft == resource.RLIM_INFINITY else f"; the file size limit (ulimit -f) is {soft} bytes"


class OutOfRoomError(OSError):
    """A write that ran out of room (disk full, file size limit, quota); the destination is unchanged."""

    def __str__(self) -> str:  # the sentence alone, without OSError's "[Errno 28]" prefix
        return self.strerror


@contextmanager
def explain_write_errors(destination: Path) -> Iterator[None]:
    """Turn a write that ran out of room (disk full, file too large, quota), however the writer reports
    it, into one `OutOfRoomError` naming `destination` and saying that nothing was replaced."""
    try:
        yield
    except Exception as error:
        if isinstance(error, OutOfRoomError):  # explained by an inner writer: name the outer destination
            code, detail, cause = error.errno, error.detail, error.__cause__
        elif _out_of_room(error):
            code = next((item.errno for item in (error, error.__cause__) if isinstance(item, OSError)), errno.ENOSPC)
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            cause = error
        else:
            raise
        explained = OutOfRoomError(
            code,
            f"cannot write {destination}: no space left on the device / file too large{_size_limit()} ({detail});"
            " nothing was replaced: free some space or raise the limit, then run again",
        )
        explained.detail = detail
        raise explained from cause


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call `write(temporary_path)` for a file beside `path`, then rename it to `path`.

    On any error the temporary is removed and an existing `path` is left as it was; running out of
    room is reported as one ``OSError`` naming `path` (:func:`explain_write_errors`).
    """
    path = Path(path)
    temporary = make_temporary(path)
    try:
        with explain_write_errors(path):
            write(str(temporary))
        default_permissions(temporary)
        if not _deferred(temporary, path):
            os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def replace_path(temporary: Path, destination: Path) -> None:
    """Move a finished `temporary` file or folder onto `destination`.

    An older `destination` is moved aside to ``.<name>.old`` and removed only once the new one is in
    place. A crash between the two renames leaves `destination` missing and the old copy aside; the
    next write (here, or :func:`make_temporary`) or load (:func:`restore_interrupted`) puts it back.
    """
    temporary, destination = Path(temporary), Path(destination)
    for check in destination_checks:
        check(destination)
    default_permissions(temporary)
    if _deferred(temporary, destination):
        return
    restore_interrupted(destination)
    if not os.path.lexists(destination):
        temporary.rename(destination)
        return
    old = old_copy(destination)
    if os.path.lexists(old):  # a crash after the new copy was in place: the old one is garbage
        _remove(old)
    destination.rename(old)
    temporary.rename(destination)
    _remove(old)


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A data pickle that needs more than plain data (numpy arrays, numbers, strings, containers) to load."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``; any other codec is refused."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode with the codec {encoding!r}")
    return text.encode("latin1")


@functools.cache
def _numpy_globals() -> dict[tuple[str, str], object]:
    """The callables a pickle of numpy arrays, dtypes and scalars names, under numpy 1 and 2 module names."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = core.numeric._frombuffer
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


class _DataUnpickler(pickle.Unpickler):
    """Resolves only the globals of :func:`_numpy_globals`; dicts, lists, tuples, numbers, strings and
    bytes need no global at all. Anything else (a class, a function such as ``os.system`` that a
    ``__reduce__`` payload names) is refused before it is looked up, so nothing in the file runs."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _numpy_globals()[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"{module}.{name}") from None


def load_data_pickle(path: str | os.PathLike) -> object:
    """Read a data file written with :func:`pickle.dump` without running any code from it.

    Admits numpy arrays (any dtype; object arrays of the admitted types), numpy dtypes and scalars,
    Python numbers, strings, bytes, lists, tuples and dicts, as a dataset's packing holds them
    (e.g. Probe3D's ``nyuv2_test.pkl``).

    Raises:
        UnsafePickleError (a ``ValueError``): the file names any other class or function (named in
            the message, nothing of it was executed), or is not a readable pickle.
        FileNotFoundError: no such file.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return _DataUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as error:
        raise UnsafePickleError(
            f"{path} needs {error} to load, which a data file may not: only numpy arrays, numbers, strings,"
            " bytes, lists, tuples and dicts are read (nothing in the file was executed)"
        ) from None
    except Exception as error:  # truncated or corrupt: whatever pickle raises, one line naming the file
        raise UnsafePickleError(f"{path} is not a readable pickle ({type(error).__name__}: {error})") from None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = [
    "atomic_write",
    "clean_stale_temporaries",
    "default_permissions",
    "destination_of",
    "OutOfRoomError",
    "destination_checks",
    "explain_write_errors",
    "is_temporary",
    "live_temporaries",
    "load_data_pickle",
    "make_temporary",
    "old_copy",
    "replace_path",
    "restore_interrupted",
    "sha256_file",
    "UnsafePickleError",
]

