"""The folders a run writes: reuse refused, user data never replaced, exports swapped in as sets."""

from __future__ import annotations

import json
import os

import pytest

import snd_hf.training.outputs as outputs
from snd_hf.data.synthetic import ensure_synthetic_scenes
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


def test_export_swap_never_mixes_two_exports_whenever_it_is_killed(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    reference.mkdir()
    write_final_export(reference, _write_export("A"), step=2)
    write_final_export(reference, _write_export("B"), step=4)
    assert _export_contents(reference) == {n: "B" for n in _export_contents(reference)} and len(_export_contents(reference)) == 4
    assert json.loads((reference / "export.json").read_text())["step"] == 4

    real_replace, moves = os.replace, 0
    while True:  # a crash after 0, 1, 2, ... renames of the swap
        run = tmp_path / f"killed_after_{moves}"
        run.mkdir()
        (run / "losses.jsonl").write_text("kept")
        write_final_export(run, _write_export("A"), step=2)
        calls = 0

        def crashing_replace(source, destination):
            nonlocal calls
            if calls == moves:
                raise KeyboardInterrupt("killed")
            calls += 1
            real_replace(source, destination)

        monkeypatch.setattr(outputs.os, "replace", crashing_replace)
        try:
            write_final_export(run, _write_export("B"), step=4)
            finished = True
        except KeyboardInterrupt:
            finished = False
        monkeypatch.setattr(outputs.os, "replace", real_replace)

        contents = _export_contents(run)
        assert len(set(contents.values())) <= 1, f"mixed export after {moves} renames: {contents}"
        if "config.json" in contents:  # loadable only when complete
            assert len(contents) == 4
        notes = prepare_output_dir(run, overwrite=False)  # the next run completes the swap
        assert _export_contents(run) == {n: "B" for n in _export_contents(reference)}, moves
        assert sorted(p.name for p in run.iterdir() if p.name != LOCK_NAME) == sorted([p.name for p in reference.iterdir()] + ["losses.jsonl"])
        assert bool(notes) != finished
        if finished:
            break
        moves += 1
    assert moves >= 8  # every rename of the swap was a crash point


def test_prepare_removes_stale_temporaries_and_with_overwrite_the_earlier_run(tmp_path):
    run = tmp_path / "run"
    write_final_export(run.parent / "run", _write_export("A"), step=2)
    for name in ("checkpoints/.tmp-step_6/student.safetensors", ".tmp-export/model.safetensors", ".losses.jsonl.x1y2.tmp"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("left by a kill")
    (run / "checkpoints" / "step_4").mkdir()
    for name in ("losses.jsonl", "config.yaml", "notes.txt"):
        (run / name).write_text(name)

    notes = prepare_output_dir(run, overwrite=False)
    assert notes == ["removed temporaries of a killed run: .losses.jsonl.x1y2.tmp, .tmp-export, checkpoints/.tmp-step_6"]
    assert (run / "checkpoints" / "step_4").is_dir() and _export_contents(run)["config.json"] == "A"

    notes = prepare_output_dir(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME, "notes.txt"]  # the user's file stays
    assert notes[0].startswith("--overwrite_output_dir: removed the earlier run's checkpoints, losses.jsonl, config.yaml, config.json")


def test_a_second_trainer_into_one_output_dir_is_refused_before_anything_changes(tmp_path):
    run = tmp_path / "run"
    write_final_export(run, _write_export("A"), step=2)
    (run / ".tmp-export").mkdir()  # what the first trainer is writing right now
    holder = lock_folder(run)  # the first trainer (another process: its own lock)
    try:
        with pytest.raises(BlockingIOError, match=f"{run} is being written by"):
            prepare_output_dir(run, overwrite=True)  # the second, with --overwrite_output_dir
        assert (run / ".tmp-export").is_dir() and _export_contents(run)["config.json"] == "A"
    finally:
        holder.release()
    assert prepare_output_dir(run, overwrite=True)[-1].startswith("--overwrite_output_dir: removed")
