"""Output folders that hold one model's results: a run manifest and a lock against concurrent writers.

`snd extract` and `snd demo` write per-image files (``{stem}.safetensors``, ``{stem}_pca.png``) into a
folder that a later run may reuse. :class:`RunFolder` keeps such a folder from ever mixing runs:

- **Manifest** (``snd_run.json``): the command, the *identity* of what made the files (the weights'
  SHA-256 and the preprocessing settings), the files the runs wrote, and the state of the last run
  (``running`` / ``complete`` / ``failed``, with its PID and host). A run whose identity differs from
  the manifest's is refused unless the caller replaces the earlier run (``snd extract --overwrite``):
  then the files the manifest lists, and only those, are removed first. A file in the way that no
  recorded run wrote is never replaced without ``overwrite``.
- **Lock** (``.snd_run.lock``, :mod:`filelock`, an OS lock the kernel releases when its process
  dies): a second writer is refused at once, naming the PID that holds the folder. A run killed before
  it finished leaves its manifest in state ``running``; the next run finds the lock free, says so and
  carries on (every file is written atomically, so what the dead run finished is whole).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .files import atomic_write

MANIFEST_NAME = "snd_run.json"
LOCK_NAME = ".snd_run.lock"


def _normalise(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so identities compare equal."""
    return json.loads(json.dumps(value))


class RunFolder:
    """Context manager owning ``folder`` for one run (see the module docstring).

    Args:
        folder: the output folder (created if missing).
        command: the command writing it (recorded, e.g. ``"snd extract"``).
        identity: JSON-able description of what determines the outputs' content; runs with equal
            identities may share the folder.
        outputs: file names (relative to ``folder``) this run will write.
        overwrite: replace files in the way even if no recorded run wrote them, and replace an earlier
            run of another identity.
        replace_other_run: replace an earlier run of another identity (its listed files are removed), but
            still never a file no recorded run wrote.
        info: extra JSON-able facts recorded in the manifest (e.g. the model's name), not compared.

    Raises (on entry, before anything in ``folder`` changes):
        BlockingIOError: another process holds the folder.
        FileExistsError: the folder holds another identity's results, or files no recorded run wrote,
            and the options do not allow replacing them.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        command: str,
        identity: dict[str, Any],
        outputs: list[str],
        *,
        overwrite: bool = False,
        replace_other_run: bool = False,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.command = command
        self.identity = _normalise(identity)
        self.outputs = list(outputs)
        self.overwrite = overwrite
        self.replace_other_run = replace_other_run or overwrite
        self.info = _normalise(info or {})
        self.manifest_path = self.folder / MANIFEST_NAME
        self._lock = FileLock(self.folder / LOCK_NAME)
        self._manifest: dict[str, Any] = {}

    def read_manifest(self) -> dict[str, Any] | None:
        """The folder's manifest, or None when it has none."""
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{self.manifest_path} is not a valid run manifest ({error}); remove it to reuse {self.folder}") from None

    def __enter__(self) -> RunFolder:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            holder = self.read_manifest() or {}
            who = f"PID {holder['pid']} on {holder['host']}" if "pid" in holder else "another process"
            raise BlockingIOError(
                f"{self.folder} is being written by {who} ({holder.get('command', 'a run')}); wait for it to finish or"
                " choose another output folder"
            ) from None
        try:
            self._manifest = self._claim(self.read_manifest())
        except BaseException:
            self._lock.release()
            raise
        return self

    def _claim(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        """Check ``previous`` against this run, remove what this run replaces, write the new manifest."""
        recorded: list[str] = []
        if previous is not None:
            if previous.get("status") == "running":  # we hold the lock, so that run is gone
                print(
                    f"{self.folder}: the previous run (PID {previous.get('pid')} on {previous.get('host')}) stopped"
                    " before finishing; the files it completed are kept.",
                    file=sys.stderr,
                )
            recorded = list(previous.get("outputs", []))
            if not all(isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name for name in recorded):
                raise ValueError(f"{self.manifest_path} lists outputs outside {self.folder}; remove it to reuse the folder")
        other_run = previous is not None and previous.get("identity") != self.identity
        if other_run and not self.replace_other_run:
            raise FileExistsError(
                f"{self.folder} holds results of another model or preprocessing ({previous.get('info', {})}, see"
                f" {self.manifest_path}); pass --overwrite to replace them, or choose another output folder"
            )
        foreign = [name for name in self.outputs if name not in recorded and (self.folder / name).exists()]
        if foreign and not self.overwrite:
            listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise FileExistsError(
                f"{self.folder} already holds {listed}, not written by a recorded run; pass --overwrite to replace"
                " them, or choose another output folder"
            )
        if other_run:
            for name in recorded:
                (self.folder / name).unlink(missing_ok=True)
            print(f"{self.folder}: removed the {len(recorded)} files of the earlier run of another model.", file=sys.stderr)
            recorded = []
        manifest = {
            "command": self.command,
            "identity": self.identity,
            "info": self.info,
            "status": "running",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "outputs": sorted(set(recorded) | set(self.outputs)),
        }
        self._write(manifest)
        return manifest

    def _write(self, manifest: dict[str, Any]) -> None:
        text = json.dumps(manifest, indent=2) + "\n"
        atomic_write(self.manifest_path, lambda temporary: Path(temporary).write_text(text))

    def __exit__(self, kind, error, traceback) -> None:
        try:
            self._manifest["status"] = "complete" if error is None else "failed"
            self._manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            if error is not None:
                self._manifest["error"] = f"{kind.__name__}: {error}"
            self._write(self._manifest)
        finally:
            self._lock.release()


__all__ = ["LOCK_NAME", "MANIFEST_NAME", "RunFolder"]
