"""File-system helpers: nothing the package writes is ever left half-written.

Every writer in snd-hf goes through these two calls: :func:`atomic_write` for one file and
:func:`replace_path` for a finished file or folder built beside its destination.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def default_permissions(path: Path) -> None:
    """Give `path` (and, for a directory, everything in it) the permissions a plain create would, not
    the private 0600/0700 of temporary files."""
    umask = os.umask(0)
    os.umask(umask)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


def atomic_write(path: Path, write) -> None:
    """Call `write(temporary_path)` for a file beside `path`, then rename it to `path`; cleans up on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        default_permissions(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def replace_path(temporary: Path, destination: Path) -> None:
    """Move a finished `temporary` file or folder onto `destination`; an older `destination` is moved
    aside first and removed only once the new one is in place (a leftover from a crash is cleared)."""
    default_permissions(temporary)
    if not destination.exists():
        temporary.rename(destination)
        return
    old = destination.with_name(f".{destination.name}.old")
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    destination.rename(old)
    temporary.rename(destination)
    shutil.rmtree(old) if old.is_dir() else old.unlink()


__all__ = ["atomic_write", "default_permissions", "replace_path"]
