"""Output folders written in place by one run at a time: a run manifest, a lock, and ownership of
every file the run writes.

Every snd-hf command that writes files into an output folder (`snd extract`, `snd demo`, `snd eval`,
`snd field segment`) opens it as a :class:`RunFolder`:

- **Manifest** (``snd_run.json``): the command, the *identity* of what made the files (e.g. the
  weights' SHA-256 and the preprocessing settings), every file the runs wrote (paths relative to the
  folder), and the state of the last run (``running`` / ``complete`` / ``failed``, with its PID and
  host). A run whose command or identity differs from the manifest's is refused unless the caller
  replaces the earlier run (``--overwrite``): then the files the manifest lists, and only those, are
  removed first. A non-empty folder without a manifest is refused without ``--overwrite``.
- **Ownership, by construction**: while the folder is open, every write of the package's atomic
  writer (:mod:`snd_hf.files`) into it is checked *before* anything is written: a file in the way
  that no recorded run wrote is never replaced without ``overwrite``. So a command deletes or
  overwrites only what its manifest says it wrote, whichever code draws the file, and never a path it
  read from a file a user can edit.
- **One set per run**: the run's finished files stay under temporary names until the run ends; then
  the list of moves (and of the earlier run's files to remove) is written into the manifest (the
  commit point) and carried out. A run that fails or is killed before the commit point leaves the
  folder's earlier set untouched (its temporaries are removed by the next run); one killed after it
  is completed by the next run. The folder holds the old complete set or the new one.
- **Lock** (``.snd_run.lock``, :mod:`filelock`, an OS lock the kernel releases when its process
  dies; its file is removed when the run ends, :class:`FolderLock`): a second writer is refused at
  once, naming the PID that holds the folder. A run killed before it finished leaves its manifest in
  state ``running``; the next run finds the lock free, says so and carries on.

Folders written as one set and swapped in whole (a feature field, ``snd synth``,
``training/pretrain_2d.py``, ``save_scene_dataset``) use :func:`replace_folder`, which keeps the same
manifest and refuses to replace a folder holding files it does not list. A set of files moved into a
folder that also holds other things (the trainer's final export beside its checkpoints) uses
:func:`commit_files`: the same commit, through the same manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .files import (
    atomic_write,
    clean_stale_temporaries,
    deferred_moves,
    destination_checks,
    is_temporary,
    make_temporary,
    replace_path,
    restore_interrupted,
)
from .schema import RunManifestSchema, read_json, validate

MANIFEST_NAME = "snd_run.json"
LOCK_NAME = ".snd_run.lock"
_OWN_NAMES = {MANIFEST_NAME, LOCK_NAME}
ENTRY_POINT = "config.json"  # what makes a folder load as a model (SnDModel.from_pretrained)


def _normalise(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so identities compare equal."""
    return json.loads(json.dumps(value))


def _listing(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """``folder``'s manifest, or None when it has none; read through the schema layer
    (:class:`snd_hf.schema.RunManifestSchema`).

    Raises:
        SchemaError (a ``ValueError``): one line naming the manifest and the key, e.g. an output
            outside ``folder`` (an absolute path, ``..``, a backslash: a hand-edited manifest can
            never make a run delete elsewhere), a status that is not one of the three, a PID that is
            not a number, or a file that is not JSON.
    """
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = read_json(path)
    except FileNotFoundError:
        return None
    validate(RunManifestSchema, manifest, path)
    return manifest


def _entries(folder: Path) -> list[str]:
    """Every file and symbolic link below ``folder``, relative, sorted; the run folder's own files
    and our temporaries left out."""
    found = []
    for directory, folders, files in os.walk(folder):
        base = Path(directory).relative_to(folder)
        links = [name for name in folders if (Path(directory) / name).is_symlink()]
        found += [(base / name).as_posix() for name in links + files]
        folders[:] = sorted(name for name in folders if name not in links and not is_temporary(Path(name)))
    return sorted(name for name in found if name not in _OWN_NAMES and not is_temporary(Path(name)))


def remove_outputs(folder: Path, names: Iterable[str]) -> None:
    """Remove the recorded outputs ``names`` of ``folder`` (files or folders), and the folders they
    leave empty; a name whose real path leads outside ``folder`` (a symbolic link) is left alone."""
    root = folder.resolve()
    for name in names:
        path = folder / name
        if not os.path.lexists(path) or not path.resolve().is_relative_to(root):
            continue
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        for parent in path.parents:
            if parent.resolve() == root or any(parent.iterdir()):
                break
            parent.rmdir()


class RunFolder:
    """Context manager owning ``folder`` for one run (see the module docstring).

    Args:
        folder: the output folder (created if missing).
        command: the command writing it (recorded and compared, e.g. ``"snd extract"``).
        identity: JSON-able description of what determines the outputs' content; runs of one command
            with equal identities may share the folder.
        outputs: paths (relative to ``folder``) this run will write, known in advance (checked on
            entry); any other file the run writes is checked when written.
        overwrite: write into a non-empty folder without a manifest, replace files in the way even if
            no recorded run wrote them, and replace an earlier run of another identity.
        replace_other_run: replace an earlier run of another identity (its listed files are removed), but
            still never a file no recorded run wrote.
        info: extra JSON-able facts recorded in the manifest (e.g. the model's name), not compared.
        caches: subfolders (e.g. ``"cache"``) whose files are cache entries keyed by what they hold,
            valid for any run: they stay when another run is replaced.
        resumable: for outputs written piece by piece (``snd extract``): while the run adds to a fresh
            folder or to a run of the same command and identity, each finished file moves in at once
            (whole, never half-written), and a run of the same identity that stopped before its end is
            resumed: what it moved in is kept. Replacing another run stays all-or-nothing.

    Raises (on entry, before anything in ``folder`` changes; or, for a file checked during the run,
    before that file is written):
        BlockingIOError: another process holds the folder.
        FileExistsError: the folder holds another run's results, files no recorded run wrote, or is a
            non-empty folder no snd run wrote, and the options do not allow replacing them.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        command: str,
        identity: dict[str, Any],
        outputs: Iterable[str] = (),
        *,
        overwrite: bool = False,
        replace_other_run: bool = False,
        info: dict[str, Any] | None = None,
        caches: Iterable[str] = (),
        resumable: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.command = command
        self.caches = tuple(f"{name.rstrip('/')}/" for name in caches)
        self.identity = _normalise(identity)
        self.outputs = list(outputs)
        self.overwrite = overwrite
        self.replace_other_run = replace_other_run or overwrite
        self.info = _normalise(info or {})
        self.manifest_path = self.folder / MANIFEST_NAME
        self._root = Path(os.path.abspath(self.folder))
        self._lock: FolderLock | None = None
        self._manifest: dict[str, Any] = {}
        self._kept: set[str] = set()  # the committed outputs this run keeps (same identity)
        self._replaceable: set[str] = set()  # the committed outputs this run may replace
        self._moves: dict[str, Path] = {}  # destination name -> this run's finished temporary
        self._committed = False
        self.resumable = resumable
        self._immediate = False  # finished files move in at once (resumable, not replacing another run)
        self._present: set[str] = set()  # what the folder held when this run claimed it

    def read_manifest(self) -> dict[str, Any] | None:
        """The folder's manifest, or None when it has none (see :func:`read_manifest`)."""
        return read_manifest(self.folder)

    def keeps(self, name: str) -> bool:
        """Whether the output ``name`` (relative to the folder) is one this run keeps as it is: written by an
        earlier run of the same command and identity (or by a stopped one, when resumable). Known once entered."""
        return name in self._kept and os.path.lexists(self.folder / name)

    def __enter__(self) -> RunFolder:
        if os.path.lexists(self.folder) and not self.folder.is_dir():
            raise FileExistsError(f"{self.folder} exists and is not a folder; choose another output folder")
        if self.folder.is_dir() and self.read_manifest() is None:
            self._refuse_a_foreign_folder()  # before the lock file is created in it
        self._lock = lock_folder(self.folder)
        try:
            manifest, notes = recover_locked(self.folder)
            for note in notes:
                print(note, file=sys.stderr)
            self._manifest = self._claim(manifest)
        except BaseException:
            self._lock.release()
            raise
        destination_checks.append(self.check_destination)
        deferred_moves.append(self._take)
        return self

    def _claim(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        """Check ``previous`` against this run and record that this run is under way (the committed
        set it describes is unchanged until :meth:`__exit__` commits)."""
        if previous is None:
            self._refuse_a_foreign_folder()
            previous = {}
        recorded = set(previous.get("outputs", []))
        earlier = {"command": previous.get("command"), **(previous.get("identity") or {})}
        current = {"command": self.command, **self.identity}
        differ = sorted(key for key in {*earlier, *current} if earlier.get(key) != current.get(key)) if recorded else []
        if differ and not self.replace_other_run:
            raise FileExistsError(
                f"{self.folder} holds the results of another run of another model, data or settings (it differs"
                f" in {', '.join(differ)}; see {self.manifest_path}); pass --overwrite to replace them, or choose"
                " another output folder"
            )
        self._replaceable = recorded
        self._kept = {name for name in recorded if name.startswith(self.caches)} if differ else recorded
        self._immediate = self.resumable and not differ
        self._present = set(_entries(self.folder))
        if self._immediate and previous.get("status") in ("running", "failed") and previous.get("running") == current:
            stopped = self._present - recorded  # moved in by the stopped run of this very identity
            self._replaceable |= stopped
            self._kept |= stopped
        if previous.get("status") == "running":  # we hold the lock, so that run is gone
            kept = "its finished files are kept and this run adds the rest" if self._kept - recorded else "nothing of it was kept"
            print(
                f"{self.folder}: the previous run (PID {previous.get('pid')} on {previous.get('host')}) stopped"
                f" before finishing; {kept}.",
                file=sys.stderr,
            )
        foreign = [name for name in self.outputs if name not in self._replaceable and os.path.lexists(self.folder / name)]
        if foreign and not self.overwrite:
            raise FileExistsError(
                f"{self.folder} already holds {_listing(foreign)}, not written by a recorded run; pass --overwrite to"
                " replace them, or choose another output folder"
            )
        manifest = {
            **previous,
            "status": "running",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "running_command": self.command,
            "running": current,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        for stale in ("finished", "error"):
            manifest.pop(stale, None)
        self._write(manifest)
        return manifest

    def _refuse_a_foreign_folder(self) -> None:
        foreign = _entries(self.folder)
        if foreign and not self.overwrite:
            raise FileExistsError(
                f"{self.folder} is not empty ({_listing(foreign)}) and no snd run wrote it (no {MANIFEST_NAME});"
                " pass --overwrite to write into it anyway (only the files this run writes are replaced), or"
                " choose another output folder"
            )

    def _name(self, destination: Path) -> str | None:
        """``destination`` relative to the folder, or None when it is not one of the run's outputs."""
        path = Path(os.path.abspath(destination))
        if path == self._root or not path.is_relative_to(self._root):
            return None
        name = path.relative_to(self._root).as_posix()
        return None if name in _OWN_NAMES or is_temporary(Path(name)) else name

    def check_destination(self, destination: Path) -> None:
        """Before ``destination`` is written: if it lies in this folder, refuse it when it is a file no
        recorded run wrote (without ``overwrite``)."""
        name = self._name(destination)
        if name is None or name in self._replaceable or name in self._moves:
            return
        if os.path.lexists(destination) and not self.overwrite:
            raise FileExistsError(
                f"{Path(os.path.abspath(destination))} was not written by an snd run in {self.folder}; pass"
                " --overwrite to replace it, or choose another output folder"
            )

    def _take(self, temporary: Path, destination: Path) -> bool:
        """Keep a finished file of this run to move it in with the others at the end (see the module
        docstring); files outside the folder are not ours to take."""
        name = self._name(destination)
        if self._immediate or name is None or not Path(os.path.abspath(temporary)).is_relative_to(self._root):
            return False
        earlier = self._moves.get(name)
        if earlier is not None and earlier != Path(temporary):  # written twice: the last one counts
            shutil.rmtree(earlier) if earlier.is_dir() else earlier.unlink(missing_ok=True)
        self._moves[name] = Path(temporary)
        return True

    def _write(self, manifest: dict[str, Any]) -> None:
        _write_manifest(self.folder, manifest)

    def _commit(self) -> None:
        """Move this run's files in as one set: the list of moves is written to the manifest first
        (the commit point), then carried out; a kill in between is completed by the next run."""
        foreign = [
            name for name in self._moves if name not in self._replaceable and os.path.lexists(self.folder / name)
        ]
        if foreign and not self.overwrite:  # put there while the run worked
            raise FileExistsError(
                f"{self.folder} now holds {_listing(sorted(foreign))}, not written by a recorded run; nothing of this"
                " run was moved in: pass --overwrite to replace them, or choose another output folder"
            )
        outputs = self._kept | set(self.outputs) | set(self._moves)
        if self._immediate:  # moved in as they were finished, by this process or the others of a launched run
            outputs |= set(_entries(self.folder)) - (self._present - self._replaceable)
        self._manifest["commit"] = {
            "command": self.command,
            "identity": self.identity,
            "info": self.info,
            "outputs": sorted(outputs),
            "moves": sorted([Path(os.path.abspath(path)).relative_to(self._root).as_posix(), name] for name, path in self._moves.items()),
            "remove": sorted(self._replaceable - outputs),
        }
        self._write(self._manifest)
        self._committed = True
        self._manifest = _finish_commit(self.folder, self._manifest)

    def __exit__(self, kind, error, traceback) -> None:
        destination_checks.remove(self.check_destination)
        deferred_moves.remove(self._take)
        try:
            if error is not None:
                self._fail(kind, error)
                return
            try:
                self._commit()
            except BaseException as failure:
                if not self._committed:  # before the commit point: the earlier set stands
                    self._fail(type(failure), failure)
                raise  # after it: the next run completes the commit
        finally:
            self._lock.release()

    def _fail(self, kind, error) -> None:
        """Drop this run's files (the folder keeps its earlier set) and record the failure."""
        self._manifest.pop("commit", None)
        for temporary in self._moves.values():
            shutil.rmtree(temporary, ignore_errors=True) if temporary.is_dir() else temporary.unlink(missing_ok=True)
        self._manifest.update(status="failed", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), error=f"{kind.__name__}: {error}")
        self._write(self._manifest)


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write(folder / MANIFEST_NAME, lambda temporary: Path(temporary).write_text(text))


def _finish_commit(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Carry out the commit recorded in ``manifest`` (again after a kill: what is done is skipped).

    Forward only, since the commit point is passed: first the earlier files this commit replaces or
    drops are removed, then the new ones move in, a model's entry point (``config.json``) removed
    first and moved in last. So at any moment the folder holds part of one set, never a mix of two,
    and loads as a model only once the set is complete.
    """
    commit = manifest["commit"]
    # Names inside the folder only: checked by read_manifest's schema.
    pending = [[temporary, name] for temporary, name in commit.get("moves", []) if os.path.lexists(folder / temporary)]
    pending.sort(key=lambda pair: (pair[1] == ENTRY_POINT, Path(pair[1]).name == ENTRY_POINT))  # the folder's own last
    removed = [name for _, name in reversed(pending)] + commit.get("remove", [])
    remove_outputs(folder, removed)
    for temporary, name in pending:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        replace_path(folder / temporary, folder / name)
    for temporary, _ in commit.get("moves", []):  # the emptied temporary folders the files came from
        parts = Path(temporary).parts
        for depth in (i for i, part in enumerate(parts[:-1]) if is_temporary(Path(part))):
            shutil.rmtree(folder.joinpath(*parts[: depth + 1]), ignore_errors=True)
    if commit.get("remove"):
        print(f"{folder}: removed the {len(commit['remove'])} files of the earlier run that this one did not rewrite.", file=sys.stderr)
    del manifest["commit"]
    manifest.update({key: commit[key] for key in ("command", "identity", "info", "outputs")})
    manifest.update(status="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _write_manifest(folder, manifest)
    return manifest


def commit_files(folder: Path, staging: Path, command: str, previous: Iterable[str] = (), info: dict[str, Any] | None = None) -> None:
    """Move every file of ``staging`` (a finished folder from :func:`snd_hf.files.make_temporary`
    inside ``folder``) into ``folder`` as one set, replacing the earlier set the manifest lists (and
    ``previous``), through the run folder's commit: the moves are written into the manifest (the commit
    point), then carried out (:func:`_finish_commit`); a kill after the commit point is completed by
    the next writer (:func:`recover`, or a :class:`RunFolder` entering). Files of ``folder`` in neither
    set (checkpoints, logs) are left alone. The caller holds ``folder``'s lock (:func:`lock_folder`).
    """
    folder, staging = Path(os.path.abspath(folder)), Path(os.path.abspath(staging))
    files = _entries(staging)
    manifest = read_manifest(folder) or {}
    earlier = set(manifest.get("outputs", [])) | set(previous)
    manifest["commit"] = {
        "command": command,
        "identity": {},
        "info": _normalise(info or {}),
        "outputs": files,
        "moves": [[(staging.relative_to(folder) / name).as_posix(), name] for name in files],
        "remove": sorted(earlier - set(files)),
    }
    _write_manifest(folder, manifest)
    _finish_commit(folder, manifest)


def recover_locked(folder: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """Under ``folder``'s lock (held by the caller): complete a commit a killed run left half done and
    remove the temporaries of killed runs at any depth.

    Returns:
        The manifest (None without one) and what was done, one line each.
    """
    manifest, notes = read_manifest(folder), []
    if manifest is not None and "commit" in manifest:
        manifest = _finish_commit(folder, manifest)
        notes.append(f"{folder}: completed the commit of a run killed while moving its files in.")
    removed = []
    for directory, _, _ in os.walk(folder):
        removed += clean_stale_temporaries(Path(directory), again=True)
    if removed:
        notes.append(f"{folder}: removed temporaries of a killed run: " + ", ".join(sorted(path.relative_to(folder).as_posix() for path in removed)))
    return manifest, notes


def recover(folder: str | os.PathLike) -> None:
    """Put ``folder`` (a run folder, or a folder swapped in whole) back in order after a killed
    writer, as its next writer would: a folder moved aside is restored, a half-done commit completed,
    and the temporaries of dead writers removed (inside it and beside it).

    Raises:
        BlockingIOError: a live writer holds the folder.
    """
    folder = Path(folder)
    restore_interrupted(folder)
    clean_stale_temporaries(folder.parent, again=True)
    if not folder.is_dir() or not any(os.path.lexists(folder / name) for name in _OWN_NAMES):
        return
    lock = lock_folder(folder)
    try:
        for note in recover_locked(folder)[1]:
            print(note, file=sys.stderr)
    finally:
        lock.release()


class FolderLock(FileLock):
    """A folder's lock whose file goes with it: the final release removes ``.snd_run.lock`` (unlinked
    while still held, then unlocked), so a finished run leaves nothing of its lock behind.

    Safe against a process that opened the old lock file just before it was unlinked: once that
    process gets the lock it finds the file unlinked and does not count it as held (filelock >= 4
    checks the inode's link count), so two processes never both hold the folder. A run killed with
    SIGKILL leaves the file; the kernel released its lock, and the next run's release removes it.
    """

    def release(self, force: bool = False) -> None:
        if self.is_locked and (force or self.lock_counter == 1):
            Path(self.lock_file).unlink(missing_ok=True)
        super().release(force=force)


def lock_folder(folder: Path) -> FolderLock:
    """Take ``folder``'s lock (created if missing), held until released (which removes its file) or
    until this process ends.

    Raises:
        BlockingIOError: another process holds it (named from the folder's manifest when it has one).
    """
    folder.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(folder / LOCK_NAME)
    # Tried again a few times: a failure can be the unlinked file of a writer that was just finishing.
    for _ in range(3):
        try:
            lock.acquire(timeout=0)
            return lock
        except Timeout:
            continue
    try:
        holder = read_manifest(folder) or {}
    except ValueError:
        holder = {}
    who = f"PID {holder['pid']} on {holder['host']}" if "pid" in holder else "another process"
    raise BlockingIOError(
        f"{folder} is being written by {who} ({holder.get('running_command', holder.get('command', 'a run'))}); wait for it to finish or"
        " choose another output folder"
    )


def replace_folder(
    destination: str | os.PathLike,
    build: Callable[[Path], object],
    command: str,
    identity: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a folder as one set: ``build(temporary)`` fills a temporary folder beside ``destination``,
    its manifest (``snd_run.json``) lists every file, and it is swapped in whole
    (:func:`snd_hf.files.replace_path`); a kill at any point leaves the previous folder or the new one.

    An existing ``destination`` is replaced only when it is an empty folder or holds nothing but the
    files its own manifest lists (a set the package wrote), or with ``overwrite``; the check runs
    before building and again just before the swap.

    Raises:
        FileExistsError: ``destination`` is a file, or holds files no snd run wrote (the first are
            named), and ``overwrite`` is False. Nothing is changed.
    """
    destination = Path(destination)
    check_replaceable(destination, overwrite)
    staging = make_temporary(destination, directory=True)
    try:
        build(staging)
        files = _entries(staging)
        manifest = {"command": command, "identity": _normalise(identity or {}), "status": "complete", "outputs": files}
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        check_replaceable(destination, overwrite)  # again: the user may have added files meanwhile
        replace_path(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination


def check_replaceable(destination: Path, overwrite: bool = False) -> None:
    """Refuse (``FileExistsError``) to replace ``destination`` unless it is missing, an empty folder, or
    holds nothing but what its manifest lists; ``overwrite`` allows any folder (never a file)."""
    restore_interrupted(destination)
    if not os.path.lexists(destination):
        return
    if destination.is_symlink() or not destination.is_dir():
        raise FileExistsError(f"{destination} exists and is not a folder; choose another output folder")
    if overwrite:
        return
    manifest = read_manifest(destination) or {}
    foreign = [name for name in _entries(destination) if name not in set(manifest.get("outputs", []))]
    if foreign:
        raise FileExistsError(
            f"{destination} holds files no snd run wrote there ({_listing(foreign)}); they would be deleted:"
            " move them, or choose another output folder"
        )


__all__ = ["LOCK_NAME", "MANIFEST_NAME", "FolderLock", "RunFolder", "check_replaceable", "commit_files", "lock_folder", "read_manifest", "recover", "recover_locked", "remove_outputs", "replace_folder"]
