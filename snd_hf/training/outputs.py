"""The folders a training run writes: its ``output_dir`` and, for synthetic data, the scene folder.

Rules, each checked before any compute:

- A run never writes into a non-empty ``output_dir`` unless told to: ``resume_from_checkpoint``
  continues the run there, ``overwrite_output_dir`` starts again (removing only what an earlier run
  wrote: checkpoints, logs, the loss log, the config and the final export; other files stay).
- Synthetic scenes are generated only into an empty folder or one the package generated itself
  (``snd_synthetic.json`` and its run manifest, nothing else beside ``scenes/``): a user's dataset
  is never replaced.

And, when the run starts, the temporaries of a killed run (the package's one naming scheme,
:mod:`snd_hf.files`) are removed and a final export it left half moved in is completed
(:func:`snd_hf.run_folder.recover_locked`); ``losses.jsonl`` keeps one line per step after a resume;
the final export is written completely into a temporary folder and then moved in as one set by the
run folder's commit (:func:`snd_hf.run_folder.commit_files`), so the folder never holds parts of two
exports (:func:`write_final_export`).
"""

from __future__ import annotations

import atexit
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

from ..data.synthetic import MARKER_NAME
from ..files import atomic_write, make_temporary, restore_interrupted
from ..run_folder import MANIFEST_NAME, commit_files, lock_folder, read_manifest, recover_locked, remove_outputs
from ..schema import read_json
from .checkpoints import checkpoint_root

EXPORT_MANIFEST = "export.json"  # lists the files of the final export (written last)
LOSS_LOG = "losses.jsonl"
RUN_FILES = ("checkpoints", "logs", LOSS_LOG, "config.yaml")  # what a run writes besides its export
EXPORT_COMMAND = "train.py"  # the final export's command in output_dir's run manifest
_locks: dict[Path, object] = {}  # the output folders this process trains into, locked until it ends


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
            entries other than it, its run manifest and ``scenes/``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"dataset_path {str(path)!r} is a file; with dataset 'synthetic' it is where scenes are generated.")
    entries = _entries(path)
    if not entries:
        return
    foreign = [name for name in entries if name not in (MARKER_NAME, MANIFEST_NAME, "scenes")]
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
    ends, when its file is removed): a second trainer writing the same ``output_dir`` is refused at
    once (``BlockingIOError``), before anything in it changes. Then completes a final export a killed
    run left half moved in, removes the temporaries killed runs left at any depth (unfinished
    checkpoints and exports, :func:`snd_hf.run_folder.recover_locked`), puts back a checkpoint a
    killed save left moved aside and, with ``overwrite``, removes an earlier run's outputs
    (:data:`RUN_FILES`, the export its manifest lists, and the manifest).
    """
    output_dir = Path(output_dir)
    if output_dir.resolve() not in _locks:
        lock = lock_folder(output_dir)
        _locks[output_dir.resolve()] = lock
        atexit.register(lock.release)
    notes = recover_locked(output_dir)[1]
    root = checkpoint_root(output_dir)
    for moved in sorted(root.glob(".step_*.old")) if root.is_dir() else ():
        if restore_interrupted(root / moved.name[1:-len(".old")]):
            notes.append(f"restored {moved.name[1:-len('.old')]}, moved aside by a killed checkpoint save")
    if overwrite:
        previous = [name for name in (*RUN_FILES, *_export_names(output_dir), MANIFEST_NAME) if (output_dir / name).exists()]
        remove_outputs(output_dir, previous)
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
# The final export, moved in as a set
# -------------------------------------------------------------------------------------------------
def _export_names(output_dir: Path) -> list[str]:
    """The files of the export in ``output_dir``: those its run manifest lists or, in an output_dir of
    an older version, those its ``export.json`` lists (plain names inside the folder only)."""
    manifest = read_manifest(output_dir)
    if manifest is not None:
        return manifest.get("outputs", [])
    try:
        names = read_json(output_dir / EXPORT_MANIFEST)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [n for n in names if isinstance(n, str) and n == Path(n).name and n not in ("", ".", "..")] + [EXPORT_MANIFEST]


def write_final_export(output_dir: str | Path, write: Callable[[Path], None], *, step: int) -> None:
    """Write the run's final export with ``write(folder)`` into a temporary folder, then move it into
    ``output_dir`` as one set.

    ``write`` fills an empty folder (native student, ``teacher/``, original-layout files); a
    manifest ``export.json`` (step and file names) is added and the whole set replaces the previous
    export through the run folder's commit (:func:`snd_hf.run_folder.commit_files`: the list of moves
    is written to ``output_dir``'s ``snd_run.json`` first). A kill before that leaves the previous
    export untouched; a kill after it is completed when the next run starts (:func:`prepare_output_dir`)
    or by :func:`snd_hf.run_folder.recover`. The caller holds ``output_dir``'s lock.
    """
    output_dir = Path(output_dir)
    staging = make_temporary(output_dir / "export", directory=True)
    try:
        write(staging)
        names = sorted(path.name for path in staging.iterdir())
        (staging / EXPORT_MANIFEST).write_text(json.dumps({"step": step, "files": names}, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # From its commit point on, a failure leaves the staged files for the next run to move in.
    commit_files(output_dir, staging, EXPORT_COMMAND, previous=_export_names(output_dir), info={"step": step})
