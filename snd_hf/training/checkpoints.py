"""Crash-safe training checkpoints: ``output_dir/checkpoints/step_{n}`` folders.

A checkpoint is written into a hidden temporary folder and renamed into place only once it is
complete (a rename within one file system is atomic), so a run killed during a save leaves the
previous checkpoint as the newest complete one and stays resumable.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_PREFIX = ".tmp-"


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_step(path: str | Path) -> int:
    """The step of a ``step_{n}`` folder."""
    match = _STEP_DIR.match(Path(path).name)
    if match is None:
        raise ValueError(f"checkpoint folder must be named step_<n>, got {str(path)!r}.")
    return int(match.group(1))


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=checkpoint_step)


def resolve_checkpoint(output_dir: str | Path, name: str) -> Path | None:
    """``"latest"`` → the newest complete checkpoint (None if there is none); else the given folder."""
    if name == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(name)
    if not path.is_dir():
        raise ValueError(f"resume_from_checkpoint {name!r} is not a checkpoint folder (or 'latest').")
    checkpoint_step(path)
    return path


def temporary_checkpoint_path(output_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` is written before :func:`finalize_checkpoint` renames it."""
    return checkpoint_root(output_dir) / f"{_TMP_PREFIX}step_{step}"


def temporary_checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of ``step`` (leftovers of a killed save are removed)."""
    tmp = temporary_checkpoint_path(output_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def finalize_checkpoint(tmp: Path, total_limit: int | None = None) -> Path:
    """Rename a complete temporary checkpoint into place, then drop the oldest beyond ``total_limit``."""
    if not tmp.name.startswith(_TMP_PREFIX):
        raise ValueError(f"tmp must be a folder from temporary_checkpoint_dir, got {str(tmp)!r}.")
    final = tmp.with_name(tmp.name[len(_TMP_PREFIX):])
    if final.exists():
        # The same step saved again (resumed from an older checkpoint): the older complete
        # checkpoints stay in place meanwhile, so "latest" always finds one.
        shutil.rmtree(final)
    tmp.rename(final)
    if total_limit is not None:
        for old in list_checkpoints(final.parent.parent)[:-total_limit]:
            shutil.rmtree(old)
    return final
