"""The folders a training run writes: its ``output_dir`` and, for synthetic data, the scene folder.

Rules, each checked before any compute:

- A run never writes into a non-empty ``output_dir`` unless told to: ``resume_from_checkpoint``
  continues the run there, ``overwrite_output_dir`` starts again (removing only what an earlier run
  wrote: checkpoints, logs, the loss log, the config and the final export; other files stay).
- Synthetic scenes are generated only into an empty folder or one the package generated itself
  (``snd_synthetic.json`` and nothing else beside ``scenes/``): a user's dataset is never replaced.

And, when the run starts, temporaries of a killed run (our own ``.tmp-*`` names) are removed and a
final export it left half-swapped is completed; ``losses.jsonl`` keeps one line per step after a
resume; the final export is written completely beside the folder's contents and then swapped in,
so the folder never holds parts of two exports (:func:`write_final_export`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from ..data.synthetic import MARKER_NAME
from ..files import atomic_write, default_permissions
from ..schema import read_json
from ..run_folder import lock_folder
from .checkpoints import stale_temporary_checkpoints

EXPORT_MANIFEST = "export.json"  # lists the files of the final export (written last)
LOSS_LOG = "losses.jsonl"
RUN_FILES = ("checkpoints", "logs", LOSS_LOG, "config.yaml")  # what a run writes besides its export
_STAGING = ".tmp-export"  # the final export while it is written
_READY = ".export-ready"  # ... once complete, while it is swapped in
_OLD = ".export-old"  # the previous export while it is swapped out
# The native model's entry point: moved out first and in last, so a half-swapped folder never loads.
_ENTRY = "config.json"
_locks: dict[Path, object] = {}  # the output folders this process trains into, locked until it ends
_TEMPORARY = re.compile(r"^(\.tmp-.*|\..*\.tmp)$")  # our temporaries: files.atomic_write and the .tmp-* folders


def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def check_output_dir(output_dir: str | Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse to write into a non-empty ``output_dir`` without ``overwrite`` or ``resume``.

    Raises:
        ValueError: ``output_dir`` is a file, or non-empty without either flag.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {str(output_dir)!r} is a file; choose a folder.")
    entries = _entries(output_dir)
    if entries and not (overwrite or resume):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ValueError(
            f"output_dir {str(output_dir)!r} is not empty ({shown}): pass --resume_from_checkpoint latest to continue "
            "its run, --overwrite_output_dir to start again there, or choose another --output_dir."
        )


def check_synthetic_dataset_path(path: str | Path) -> None:
    """Refuse to generate synthetic scenes into a folder holding anything the package did not generate.

    Raises:
        ValueError: ``path`` is a file, or a non-empty folder without ``snd_synthetic.json`` or with
            entries other than it and ``scenes/``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"dataset_path {str(path)!r} is a file; with dataset 'synthetic' it is where scenes are generated.")
    entries = _entries(path)
    if not entries:
        return
    foreign = [name for name in entries if name not in (MARKER_NAME, "scenes")]
    if MARKER_NAME not in entries or foreign:
        what = f"files it did not generate ({', '.join(foreign[:5])})" if foreign else f"no {MARKER_NAME}"
        raise ValueError(
            f"dataset_path {str(path)!r} holds data the package did not generate ({what}); with dataset 'synthetic' "
            "scenes are generated there and would replace it. Pass --dataset scannetpp to train on that folder, "
            "or an empty or new --dataset_path for generated scenes."
        )


def prepare_output_dir(output_dir: str | Path, *, overwrite: bool) -> list[str]:
    """Make ``output_dir`` ready for a run (main process only); returns what was done, one line each.

    Takes the folder's lock first (:func:`snd_hf.run_folder.lock_folder`, held until the process
    ends): a second trainer writing the same ``output_dir`` is refused at once (``BlockingIOError``),
    before anything in it changes. Then removes temporaries a killed run left (``.tmp-*`` folders, ``.*.tmp`` files, unfinished
    checkpoints), completes a final export it left half-swapped and, with ``overwrite``, removes an
    earlier run's outputs (:data:`RUN_FILES` and the files its ``export.json`` lists).
    """
    output_dir = Path(output_dir)
    if output_dir.resolve() not in _locks:
        _locks[output_dir.resolve()] = lock_folder(output_dir)
    notes = []
    if (output_dir / _READY).is_dir():
        _swap_in_export(output_dir)
        notes.append(f"completed the final export that a killed run left half swapped in {output_dir}")
    stale = [output_dir / name for name in _entries(output_dir) if _TEMPORARY.match(name) or name == _OLD]
    stale += stale_temporary_checkpoints(output_dir)
    for path in stale:
        _remove(path)
    if stale:
        notes.append("removed temporaries of a killed run: " + ", ".join(str(p.relative_to(output_dir)) for p in stale))
    if overwrite:
        previous = [name for name in (*RUN_FILES, *_export_names(output_dir)) if (output_dir / name).exists()]
        for name in previous:
            _remove(output_dir / name)
        if previous:
            notes.append(f"--overwrite_output_dir: removed the earlier run's {', '.join(previous)}")
    return notes


# -------------------------------------------------------------------------------------------------
# The loss log
# -------------------------------------------------------------------------------------------------
class LossLog:
    """``output_dir/losses.jsonl``: one JSON line per logged optimizer step, ``null`` for a non-finite value.

    Args:
        path: the log file.
        start_step: the step the run starts from (0, or the resumed checkpoint's); lines of later
            steps, which a killed run wrote after that checkpoint, are dropped so that every step
            appears once.
    """

    def __init__(self, path: str | Path, start_step: int) -> None:
        self.path = Path(path)
        kept = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by the kill
                    continue
                if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= start_step:
                    kept.append(line + "\n")
        atomic_write(self.path, lambda temporary: Path(temporary).write_text("".join(kept)))
        self._handle = open(self.path, "a")

    def write(self, step: int, **values: float) -> None:
        record = {"step": step, **{k: v if v is None or math.isfinite(v) else None for k, v in values.items()}}
        self._handle.write(json.dumps(record, allow_nan=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


# -------------------------------------------------------------------------------------------------
# The final export, swapped in as a set
# -------------------------------------------------------------------------------------------------
def _export_names(output_dir: Path) -> list[str]:
    """The files of the export in ``output_dir``, from its manifest ([] without one)."""
    try:
        names = read_json(output_dir / EXPORT_MANIFEST)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    # Only plain names inside the folder: a manifest never makes us touch anything else.
    return [n for n in names if isinstance(n, str) and n == Path(n).name and n not in ("", ".", "..")] + [EXPORT_MANIFEST]


def _in_order(names: list[str], *, moving_in: bool) -> list[str]:
    """Moving out: the entry point first, the manifest last. Moving in: both last (entry, manifest)."""
    rest = [n for n in names if n not in (_ENTRY, EXPORT_MANIFEST)]
    if moving_in:
        return rest + [n for n in (_ENTRY, EXPORT_MANIFEST) if n in names]
    return [n for n in (_ENTRY,) if n in names] + rest + [n for n in (EXPORT_MANIFEST,) if n in names]


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _swap_in_export(output_dir: Path) -> None:
    """Move the previous export out of ``output_dir`` completely, then the ready one in.

    Resumable after a kill at any point (it is run again when the next run starts): the files
    still in the ready folder are the new ones not yet moved in, and while any of them has a
    namesake in ``output_dir`` that namesake is the previous export's. The folder therefore holds
    a subset of one export at any time, never files of two, and it loads as a model (``config.json``)
    only once the new export is complete.
    """
    ready, old = output_dir / _READY, output_dir / _OLD
    pending = _entries(ready)
    if pending:
        old.mkdir(exist_ok=True)
        previous = set(_export_names(output_dir)) | {name for name in pending if (output_dir / name).exists()}
        for name in _in_order(sorted(previous), moving_in=False):
            if (output_dir / name).exists() or (output_dir / name).is_symlink():
                if (old / name).exists():
                    _remove(old / name)
                os.replace(output_dir / name, old / name)
        for name in _in_order(pending, moving_in=True):
            os.replace(ready / name, output_dir / name)
    shutil.rmtree(old, ignore_errors=True)
    ready.rmdir()


def write_final_export(output_dir: str | Path, write: Callable[[Path], None], *, step: int) -> None:
    """Write the run's final export with ``write(folder)`` beside ``output_dir``'s contents, then swap it in.

    ``write`` fills an empty folder (native student, ``teacher/``, original-layout files); a
    manifest ``export.json`` (step and file names) is added and the whole set replaces the previous
    export in ``output_dir``. A kill before the swap leaves the previous export untouched; a kill
    during it is completed by :func:`prepare_output_dir` when the next run starts.
    """
    output_dir = Path(output_dir)
    staging, ready = output_dir / _STAGING, output_dir / _READY
    if ready.is_dir():  # a killed run's complete export: finish its swap first
        _swap_in_export(output_dir)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    write(staging)
    names = _entries(staging)
    (staging / EXPORT_MANIFEST).write_text(json.dumps({"step": step, "files": names}, indent=1) + "\n")
    default_permissions(staging)  # not the private mode of temporary files
    staging.rename(ready)  # complete: from here on the swap is finished even after a kill
    _swap_in_export(output_dir)
