"""The folders a run writes: reuse refused, user data never replaced, exports moved in as sets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from faults import kill_before_move

from snd_hf.data.synthetic import ensure_synthetic_scenes
from snd_hf.files import TEMPORARY_TAG, make_temporary
from snd_hf.run_folder import LOCK_NAME, lock_folder
from snd_hf.training.outputs import (
    LossLog,
    check_output_dir,
    check_synthetic_dataset_path,
    prepare_output_dir,
    write_final_export,
)


def test_non_empty_output_dir_needs_resume_or_overwrite(tmp_path):
    check_output_dir(tmp_path / "new", overwrite=False, resume=False)  # missing: fine
    (tmp_path / "used").mkdir()
    check_output_dir(tmp_path / "used", overwrite=False, resume=False)  # empty: fine
    (tmp_path / "used" / "losses.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"output_dir '.*used' is not empty \(losses.jsonl\): pass --resume_from_checkpoint"):
        check_output_dir(tmp_path / "used", overwrite=False, resume=False)
    check_output_dir(tmp_path / "used", overwrite=True, resume=False)
    check_output_dir(tmp_path / "used", overwrite=False, resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_output_dir(tmp_path / "file", overwrite=True, resume=False)


def test_synthetic_scenes_never_go_into_a_folder_the_package_did_not_generate(tmp_path):
    check_synthetic_dataset_path(tmp_path / "new")
    user = tmp_path / "mydata"
    user.mkdir()
    (user / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match=r"dataset_path '.*mydata' holds data the package did not generate \(files it did not generate \(keep.txt\)\)"):
        check_synthetic_dataset_path(user)
    (user / "keep.txt").unlink()
    (user / "scenes").mkdir()  # a ScanNet++-like layout, no marker
    with pytest.raises(ValueError, match="no snd_synthetic.json"):
        check_synthetic_dataset_path(user)

    generated = ensure_synthetic_scenes(tmp_path / "generated", num_scenes=1, num_frames=2, height=8, width=8, progress=False)
    check_synthetic_dataset_path(generated)  # ours: may be regenerated
    (generated / "notes.md").write_text("mine")
    with pytest.raises(ValueError, match=r"files it did not generate \(notes.md\)"):
        check_synthetic_dataset_path(generated)


def test_loss_log_keeps_one_line_per_step_and_writes_null_for_nan(tmp_path):
    path = tmp_path / "losses.jsonl"
    lines = [json.dumps({"step": step, "loss": 1.0 / step}) for step in range(1, 7)]
    path.write_text("\n".join(lines) + '\n{"step": 7, "lo')  # a line cut short by a kill
    log = LossLog(path, start_step=3)  # resumed from the step-3 checkpoint
    log.write(4, loss=float("nan"), lr=1e-3)
    log.write(5, loss=0.5, lr=float("inf"))
    log.close()
    records = [json.loads(line, parse_constant=pytest.fail) for line in path.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[2]["loss"] == pytest.approx(1 / 3)
    assert records[3] == {"step": 4, "loss": None, "lr": 1e-3} and records[4] == {"step": 5, "loss": 0.5, "lr": None}
    LossLog(path, start_step=0).close()  # starting from scratch
    assert path.read_text() == ""


def _write_export(tag: str):
    """An export writer whose every file holds ``tag``."""

    def write(folder):
        for name in ("config.json", "model.safetensors", "student_original.pth"):
            (folder / name).write_text(tag)
        (folder / "teacher").mkdir()
        (folder / "teacher" / "config.json").write_text(tag)

    return write


def _export_contents(folder) -> dict[str, str]:
    names = ("config.json", "model.safetensors", "student_original.pth", "teacher/config.json")
    return {name: (folder / name).read_text() for name in names if (folder / name).exists()}


def _killed_export(run, tag: str, step: int, kill_at: int) -> bool:
    """``write_final_export`` in a forked child killed with SIGKILL before its move (``os.replace`` /
    ``os.rename``) number ``kill_at``; True when it finished first."""
    child = os.fork()
    if child == 0:
        kill_before_move(kill_at)
        try:
            write_final_export(run, _write_export(tag), step=step)
        finally:
            os._exit(0)
    _, status = os.waitpid(child, 0)
    return not os.WIFSIGNALED(status)


def test_export_commit_never_mixes_two_exports_whenever_it_is_killed(tmp_path):
    reference = tmp_path / "reference"
    reference.mkdir()
    write_final_export(reference, _write_export("A"), step=2)
    write_final_export(reference, _write_export("B"), step=4)
    assert _export_contents(reference) == {n: "B" for n in _export_contents(reference)} and len(_export_contents(reference)) == 4
    assert json.loads((reference / "export.json").read_text())["step"] == 4

    kill_at, sides = 0, []
    while True:  # a kill before move 0, 1, 2, ... of the export
        run = tmp_path / f"killed_at_{kill_at}"
        run.mkdir()
        (run / "losses.jsonl").write_text("kept")
        write_final_export(run, _write_export("A"), step=2)
        finished = _killed_export(run, "B", 4, kill_at)
        contents = _export_contents(run)
        assert len(set(contents.values())) <= 1, f"mixed export after a kill at move {kill_at}: {contents}"
        if "config.json" in contents:  # loadable only when complete
            assert len(contents) == 4
        prepare_output_dir(run, overwrite=False)  # the next run: a commit passed its point is completed
        side = set(_export_contents(run).values())
        assert side in ({"A"}, {"B"}) and len(_export_contents(run)) == 4, (kill_at, _export_contents(run))
        sides.append(side.pop())
        names = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.name != LOCK_NAME)
        assert names == sorted([p.relative_to(reference).as_posix() for p in reference.rglob("*")] + ["losses.jsonl"])
        if finished:
            break
        kill_at += 1
    # Every move was a kill point: the manifest's commit, the five files, the manifest's completion.
    assert kill_at == 7 and sides == ["A"] + ["B"] * 7


def _dead_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(process.stdout)


def test_prepare_removes_stale_temporaries_and_with_overwrite_the_earlier_run(tmp_path):
    run = tmp_path / "run"
    write_final_export(run.parent / "run", _write_export("A"), step=2)
    killed = f"{TEMPORARY_TAG}{socket.gethostname()}~{_dead_pid()}~x1y2"  # the package's one naming scheme
    for name in (f"checkpoints/.step_6{killed}/student.safetensors", f".export{killed}/model.safetensors", f".losses.jsonl{killed}"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("left by a kill")
    (run / "checkpoints" / "step_4").mkdir()
    for name in ("losses.jsonl", "config.yaml", "notes.txt"):
        (run / name).write_text(name)

    notes = prepare_output_dir(run, overwrite=False)
    assert notes == [f"{run}: removed temporaries of a killed run: .export{killed}, .losses.jsonl{killed}, checkpoints/.step_6{killed}"]
    assert (run / "checkpoints" / "step_4").is_dir() and _export_contents(run)["config.json"] == "A"

    notes = prepare_output_dir(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME, "notes.txt"]  # the user's file stays
    assert notes[0].startswith("--overwrite_output_dir: removed the earlier run's checkpoints, losses.jsonl, config.yaml, config.json")
    assert notes[0].endswith("teacher/config.json, snd_run.json")


def test_a_second_trainer_into_one_output_dir_is_refused_before_anything_changes(tmp_path):
    run = tmp_path / "run"
    write_final_export(run, _write_export("A"), step=2)
    writing = make_temporary(run / "export", directory=True)  # what the first trainer is writing right now
    holder = lock_folder(run)  # the first trainer (another process: its own lock)
    try:
        with pytest.raises(BlockingIOError, match=f"{run} is being written by"):
            prepare_output_dir(run, overwrite=True)  # the second, with --overwrite_output_dir
        assert writing.is_dir() and _export_contents(run)["config.json"] == "A"
    finally:
        holder.release()
    assert not (run / LOCK_NAME).exists()  # released: its file went with it
    assert prepare_output_dir(run, overwrite=True)[-1].startswith("--overwrite_output_dir: removed")
    assert writing.is_dir()  # a live writer's temporary is never removed
