"""snd_hf/run_folder.py: one identity per output folder, a manifest of what wrote it, a lock against a second writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from snd_hf.files import atomic_write
from snd_hf.run_folder import LOCK_NAME, MANIFEST_NAME, RunFolder

A = {"weights_sha256": "a" * 64, "processor": {"size": {"shortest_edge": 448}}}
B = {"weights_sha256": "b" * 64, "processor": {"size": {"shortest_edge": 448}}}


def write_run(folder, identity, names, **options):
    with RunFolder(folder, "test", identity, names, **options):
        for name in names:
            (folder / name).write_text(f"{identity['weights_sha256'][0]} {name}")


def manifest(folder):
    return json.loads((folder / MANIFEST_NAME).read_text())


def test_same_identity_shares_the_folder_and_the_manifest_lists_every_output(tmp_path):
    write_run(tmp_path, A, ["x.safetensors"])
    write_run(tmp_path, A, ["y.safetensors"])
    record = manifest(tmp_path)
    assert record["identity"] == A and record["status"] == "complete" and record["pid"] == os.getpid()
    assert record["outputs"] == ["x.safetensors", "y.safetensors"]


def test_another_identity_is_refused_unless_replaced_and_never_touches_foreign_files(tmp_path):
    write_run(tmp_path, A, ["x.safetensors", "y.safetensors"])
    (tmp_path / "notes.txt").write_text("mine")
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    with pytest.raises(FileExistsError, match="another run .*differs in weights_sha256; see .*--overwrite"):
        write_run(tmp_path, B, ["x.safetensors"])
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before  # nothing changed

    write_run(tmp_path, B, ["x.safetensors"], overwrite=True)
    assert (tmp_path / "x.safetensors").read_text() == "b x.safetensors"
    assert not (tmp_path / "y.safetensors").exists()  # A's other output went with A: no mixing
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert manifest(tmp_path)["identity"] == B and manifest(tmp_path)["outputs"] == ["x.safetensors"]

    write_run(tmp_path, A, ["z.safetensors"], replace_other_run=True)  # the demo's mode
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith((".", "snd_run"))) == ["notes.txt", "z.safetensors"]


def test_files_no_recorded_run_wrote_are_not_replaced_without_overwrite(tmp_path):
    (tmp_path / "x.safetensors").write_text("from an older tool")
    for options in ({}, {"replace_other_run": True}):  # a non-empty folder no run wrote
        with pytest.raises(FileExistsError, match=r"is not empty \(x.safetensors\) and no snd run wrote it.*--overwrite"):
            write_run(tmp_path, A, ["x.safetensors"], **options)
    assert os.listdir(tmp_path) == ["x.safetensors"]  # not even a lock file left in it
    assert (tmp_path / "x.safetensors").read_text() == "from an older tool"
    write_run(tmp_path, A, ["y.safetensors"], overwrite=True)  # written beside it; the user's file untouched
    assert (tmp_path / "x.safetensors").read_text() == "from an older tool"
    with pytest.raises(FileExistsError, match="already holds x.safetensors, not written by a recorded run"):
        write_run(tmp_path, A, ["x.safetensors"])
    with pytest.raises(FileExistsError, match="x.safetensors was not written by an snd run"):  # claimed while running
        with RunFolder(tmp_path, "test", A, []):
            atomic_write(tmp_path / "x.safetensors", lambda temporary: open(temporary, "w").write("clobbered"))
    assert (tmp_path / "x.safetensors").read_text() == "from an older tool"
    write_run(tmp_path, A, ["x.safetensors"], overwrite=True)
    assert (tmp_path / "x.safetensors").read_text() == "a x.safetensors"


def test_a_manifest_cannot_make_a_run_delete_outside_its_folder(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / MANIFEST_NAME).write_text(json.dumps({"identity": A, "outputs": ["../precious.txt"]}))
    with pytest.raises(ValueError, match=r"snd_run.json: outputs\[0\] must be a path inside the folder"):
        write_run(folder, B, ["x.safetensors"], overwrite=True)
    assert outside.read_text() == "keep"


@pytest.mark.parametrize(
    "record, message",
    [
        ({"outputs": ["x", "/etc/passwd"]}, r"outputs\[1\] must be a path inside the folder"),
        ({"outputs": "x.safetensors"}, r"outputs must be a valid list"),
        ({"status": "done"}, r"status must be 'running', 'complete' or 'failed' \(got 'done'\)"),
        ({"pid": "12"}, r"pid must be a valid integer \(got '12'\)"),
        ({"commit": {"moves": [["a", "../b"]]}}, r"commit.moves\[0\]\[1\] must be a path inside the folder"),
        ({"identity": ["a"]}, r"identity must be a valid dictionary"),
        ([1, 2], r"must hold a JSON object"),
    ],
)
def test_a_hostile_manifest_is_one_line_naming_the_file_and_the_key(tmp_path, record, message):
    """The manifest is read through snd_hf/schema.py: nothing of the folder changes, and the error is one
    line naming the manifest and the key."""
    (tmp_path / "x.safetensors").write_text("kept")
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=f"^{tmp_path / MANIFEST_NAME}: {message}") as raised:
        write_run(tmp_path, A, ["x.safetensors"], overwrite=True)
    assert "\n" not in str(raised.value)
    assert sorted(os.listdir(tmp_path)) == [MANIFEST_NAME, "x.safetensors"]  # no lock file left either
    assert (tmp_path / "x.safetensors").read_text() == "kept"


def test_a_run_leaves_no_lock_file_behind(tmp_path):
    write_run(tmp_path, A, ["x.safetensors"])
    assert sorted(os.listdir(tmp_path)) == [MANIFEST_NAME, "x.safetensors"]
    with pytest.raises(RuntimeError):  # a failed run neither
        with RunFolder(tmp_path, "test", A, ["y.safetensors"]):
            assert (tmp_path / LOCK_NAME).exists()  # held while it runs
            raise RuntimeError("stop")
    assert sorted(os.listdir(tmp_path)) == [MANIFEST_NAME, "x.safetensors"]


def test_a_failed_run_is_recorded(tmp_path):
    with pytest.raises(RuntimeError):
        with RunFolder(tmp_path, "test", A, ["x.safetensors"]):
            raise RuntimeError("disk on fire")
    assert manifest(tmp_path)["status"] == "failed" and "disk on fire" in manifest(tmp_path)["error"]
    write_run(tmp_path, A, ["x.safetensors"])  # and the lock was released


HOLDER = textwrap.dedent(
    """
    import json, os, socket, sys, time
    from filelock import FileLock
    folder = sys.argv[1]
    lock = FileLock(os.path.join(folder, {lock!r}))
    lock.acquire()
    record = {{"identity": {identity!r}, "outputs": [], "status": "running", "pid": os.getpid(),
              "host": socket.gethostname(), "command": "test"}}
    with open(os.path.join(folder, {manifest!r}), "w") as handle:
        json.dump(record, handle)
    print("ready", flush=True)
    time.sleep(120)
    """
).format(lock=LOCK_NAME, manifest=MANIFEST_NAME, identity=A)


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_cleared(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(BlockingIOError, match=f"being written by PID {holder.pid} on .*\\(test\\)"):
            write_run(tmp_path, A, ["x.safetensors"])
        assert not (tmp_path / "x.safetensors").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the manifest still says "running"
        holder.wait()
    assert (tmp_path / LOCK_NAME).exists()  # the killed holder's: the kernel released its lock
    write_run(tmp_path, A, ["x.safetensors"])
    assert f"previous run (PID {holder.pid}" in capsys.readouterr().err
    assert manifest(tmp_path)["status"] == "complete" and (tmp_path / "x.safetensors").exists()
    assert not (tmp_path / LOCK_NAME).exists()  # this run's release removed it


def test_cache_entries_outlive_the_run_they_were_written_by(tmp_path):
    (tmp_path / "cache").mkdir()
    write_run(tmp_path, A, ["cache/scenes.pt", "x.safetensors"], caches=["cache"])
    write_run(tmp_path, B, ["y.safetensors"], overwrite=True, caches=["cache"])
    assert (tmp_path / "cache" / "scenes.pt").read_text() == "a cache/scenes.pt"  # valid for any run: kept
    assert not (tmp_path / "x.safetensors").exists()  # A's result went with A
    assert manifest(tmp_path)["outputs"] == ["cache/scenes.pt", "y.safetensors"]
