"""snd_hf.files: whole files or nothing, the crash window of replace_path recovered, stale temporaries
of killed runs removed (and only those), and a full disk reported as one clear error."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from snd_hf import files
from snd_hf.files import (
    OutOfRoomError,
    atomic_write,
    explain_write_errors,
    make_temporary,
    old_copy,
    replace_path,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")

    def fails(temporary: str) -> None:
        Path(temporary).write_text("half")
        raise RuntimeError("writer broke")

    with pytest.raises(RuntimeError, match="writer broke"):
        atomic_write(path, fails)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    atomic_write(path, lambda temporary: Path(temporary).write_text("new"))
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # a plain create's permissions, not 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_crash_between_the_renames_is_recovered(tmp_path, monkeypatch, caplog):
    destination = tmp_path / "out"
    destination.mkdir()
    (destination / "weights").write_text("first")
    new = make_temporary(destination, directory=True)
    (new / "weights").write_text("second")
    renames = []
    real_rename = Path.rename

    def crash_on_second_rename(self, target):
        renames.append(target)
        if len(renames) == 2:
            raise KeyboardInterrupt  # the process dies between "destination -> .old" and "new -> destination"
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        replace_path(new, destination)
    monkeypatch.undo()
    assert not destination.exists() and (old_copy(destination) / "weights").read_text() == "first"  # the window

    with caplog.at_level("WARNING", logger="snd_hf.files"):
        replace_path(new, destination)  # the next write puts the old copy back, then replaces it as asked
    assert "restored" in caplog.text and (destination / "weights").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path, caplog):
    target = tmp_path / "features.safetensors"
    script = (  # files.py imports nothing of the package: load it alone, without torch, to keep this quick
        "import importlib.util, os\nfrom pathlib import Path\n"
        f"spec = importlib.util.spec_from_file_location('files', {str(Path(files.__file__))!r})\n"
        "module = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(module)\n"
        "def die(temporary):\n    Path(temporary).write_bytes(b'x' * 1000)\n    os.kill(os.getpid(), 9)\n"
        f"module.atomic_write(Path({str(target)!r}), die)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, timeout=120)
    assert killed.returncode == -9
    (leftover,) = [p for p in tmp_path.iterdir() if p.name.startswith(".features.safetensors")]
    live = make_temporary(tmp_path / "other.bin")  # this process is alive: its temporary must survive
    unrelated = tmp_path / ".features.safetensors.tmp"  # not our naming: never touched
    unrelated.write_text("someone else's")
    files._swept.discard(tmp_path.resolve())  # a new run: the folder is swept again
    with caplog.at_level("WARNING", logger="snd_hf.files"):
        atomic_write(target, lambda temporary: Path(temporary).write_bytes(b"features"))
    assert not leftover.exists() and live.exists() and unrelated.exists()
    assert f"removed {leftover}, a temporary left by an interrupted snd-hf run" in caplog.text
    assert target.read_bytes() == b"features"


def test_the_other_processes_find_a_live_writers_temporary_folder_by_its_destination(tmp_path):
    """How every process of a distributed run finds the checkpoint folder its main process made
    (``files.live_temporaries``): a live writer's temporary of that destination, never a dead one's,
    nor one of another destination."""
    step = tmp_path / "checkpoints" / "step_6"
    live = make_temporary(step, directory=True)
    dead = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); from snd_hf.files import make_temporary; "
         f"print(make_temporary(__import__('pathlib').Path({str(step)!r}), directory=True))"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout.strip()  # fmt: skip
    make_temporary(step.with_name("step_60"), directory=True)
    assert Path(dead).is_dir() and files.live_temporaries(step) == [live]
    assert files.destination_of(live) == step and files.destination_of(step) == step


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EFBIG, "File too large"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"),
        RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left\" })"),
    ],
    ids=["ENOSPC", "EFBIG", "torch", "safetensors"],
)
def test_running_out_of_room_is_one_clear_error(tmp_path, error):
    path = tmp_path / "model.pth"
    path.write_text("previous")

    def write(temporary: str) -> None:
        raise error

    with pytest.raises(OutOfRoomError, match=f"^cannot write {path}: no space left on the device / file too large") as caught:
        atomic_write(path, write)
    assert caught.value.errno in (errno.ENOSPC, errno.EFBIG) and "nothing was replaced" in str(caught.value)
    assert path.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]
    with pytest.raises(OutOfRoomError, match=f"^cannot write {tmp_path / 'outer'}: .*{re.escape(caught.value.detail)}"):
        with explain_write_errors(tmp_path / "outer"):  # an outer writer names its own destination
            atomic_write(path, write)


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(RuntimeError, match="^some other failure$"):
        atomic_write(tmp_path / "x", lambda temporary: (_ for _ in ()).throw(RuntimeError("some other failure")))


def test_only_the_shared_writer_moves_files_and_datasets_folders_go_through_it():
    """By construction: no module of the package or training script moves a file into place, makes a
    temporary, or calls `datasets`' `save_to_disk` (which replaces a folder silently) other than
    snd_hf/files.py; the one `save_to_disk` is `data.hf.save_scene_dataset`'s, inside
    `run_folder.replace_folder`."""
    import snd_hf

    package = Path(snd_hf.__file__).parent
    moves = re.compile(r"os\.replace|os\.rename|\.rename\(|shutil\.move|mkdtemp|mkstemp|NamedTemporaryFile|save_to_disk\(")
    found = []
    for path in [*package.rglob("*.py"), *(package.parent / "training").glob("*.py")]:
        if path == package / "files.py":
            continue
        for line in path.read_text().splitlines():
            if moves.search(line.split("#")[0]) and not line.lstrip().startswith(('"""', "``")):
                found.append((path.relative_to(package.parent).as_posix(), line.strip()))
    assert found == [
        ("snd_hf/data/hf.py", 'return replace_folder(path, lambda folder: dataset.save_to_disk(str(folder)), "save_scene_dataset", overwrite=overwrite)')
    ]
