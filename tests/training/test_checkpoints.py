"""The training state in checkpoints: exact round trip, strict loading, nothing ever unpickled."""

from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from snd_hf.training import TrainingConfig, make_ema_teacher
from snd_hf.training.builders import build_optimizer, build_student
from snd_hf.training.checkpoints import load_training_state, save_training_state
from snd_hf.training.schedule import one_cycle_schedule

# The paper's objective: a LoRA student with a DINO head and an EMA teacher, all in the checkpoint.
CONFIG = TrainingConfig(
    init="random", finetune="lora", loss="dino_head", teacher_mode="ema",
    hidden_size=24, num_attention_heads=2, head_hidden_dim=16, head_bottleneck_dim=8, head_prototypes=16,
)  # fmt: skip


class _Payload:
    """Unpickling this object creates ``marker``: what a malicious checkpoint file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _run(steps: int = 2):
    """A student, its EMA teacher, optimizer and schedule after ``steps`` real optimizer steps."""
    student = build_student(CONFIG)
    teacher = make_ema_teacher(student)
    optimizer = build_optimizer(CONFIG, student)
    scheduler = one_cycle_schedule(optimizer, 10, 0.3)
    for _ in range(steps):
        student(torch.rand(1, 1, 3, 28, 42))[1].logsumexp(-1).mean().backward()  # the head logits
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return student, teacher, optimizer, scheduler


def _save(directory: Path, student, teacher, optimizer, scheduler) -> None:
    directory.mkdir()
    save_training_state(
        directory, modules={"student": student, "teacher": teacher}, optimizer=optimizer, scheduler=scheduler,
        trainer_state={"step": 2, "accelerator_step": 0, "skipped_steps": [1]},
    )  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of two real steps, made once; tests copy it before changing it."""
    directory = tmp_path_factory.mktemp("saved") / "step_2"
    _save(directory, *_run())
    return directory


def _load(directory: Path, student, teacher, optimizer, scheduler) -> dict:
    return load_training_state(
        directory, modules={"student": student, "teacher": teacher}, optimizer=optimizer, scheduler=scheduler
    )


def test_round_trip_restores_weights_optimizer_schedule_and_rng(tmp_path):
    student, teacher, optimizer, scheduler = _run()
    expected_student = {k: v.clone() for k, v in student.state_dict().items()}
    expected_moments = {i: {k: v.clone() for k, v in s.items()} for i, s in optimizer.state_dict()["state"].items()}
    expected_lr = optimizer.param_groups[0]["lr"]
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    _save(tmp_path / "step_2", student, teacher, optimizer, scheduler)
    expected_draws = (torch.rand(3), np.random.rand(3), random.random())

    fresh_student, fresh_teacher, fresh_optimizer, fresh_scheduler = _run(steps=1)  # different everything
    state = _load(tmp_path / "step_2", fresh_student, fresh_teacher, fresh_optimizer, fresh_scheduler)

    assert state == {"step": 2, "accelerator_step": 0, "skipped_steps": [1]}
    for name, tensor in fresh_student.state_dict().items():
        assert torch.equal(tensor, expected_student[name]), name
    restored = fresh_optimizer.state_dict()
    for index, moments in expected_moments.items():
        for key, value in moments.items():
            assert torch.equal(restored["state"][index][key], value), (index, key)
    assert restored["param_groups"][0]["betas"] == (0.9, 0.999)  # a tuple again (AdamW's)
    assert fresh_optimizer.param_groups[0]["lr"] == expected_lr
    fresh_optimizer.step(), fresh_scheduler.step()
    optimizer.step(), scheduler.step()
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]  # same place in the schedule
    draws = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], expected_draws[0]) and np.array_equal(draws[1], expected_draws[1])
    assert draws[2] == expected_draws[2]


def test_checkpoint_files_are_safetensors_and_json_only(checkpoint):
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names == ["optimizer.safetensors", "rng_state_0.safetensors", "student.safetensors", "teacher.safetensors", "trainer_state.json"]
    for name in names:  # no pickle protocol header (b"\x80") and no zip (torch.save) anywhere
        assert (checkpoint / name).read_bytes()[:2] not in (b"\x80\x02", b"\x80\x04", b"PK")


@pytest.mark.parametrize(
    "planted",
    ["student.safetensors", "teacher.safetensors", "optimizer.safetensors", "rng_state_0.safetensors",
     "trainer_state.json", "custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin"],
)  # fmt: skip
def test_planted_pickle_payload_is_refused_and_never_runs(tmp_path, checkpoint, planted):
    marker = tmp_path / "payload-ran"
    payload = pickle.dumps(_Payload(marker))
    pickle.loads(payload)  # the payload is live: unpickling it creates the marker
    assert marker.is_dir()
    marker.rmdir()

    checkpoint = Path(shutil.copytree(checkpoint, tmp_path / "step_2"))
    (checkpoint / planted).write_bytes(payload)  # replaces our file, or adds accelerate's pickles
    with pytest.raises(ValueError, match=planted.replace(".", r"\.")):
        _load(checkpoint, *_run(steps=0))
    assert not marker.exists()


def test_non_finite_or_mismatched_state_is_refused_naming_it(tmp_path, checkpoint):
    checkpoint = Path(shutil.copytree(checkpoint, tmp_path / "step_2"))
    student_file = checkpoint / "student.safetensors"
    good = load_file(student_file)

    bad = dict(good)
    name = next(k for k in bad if k.endswith("lora_B.default.weight"))
    bad[name] = bad[name].clone()
    bad[name][0, 0] = float("nan")
    save_file(bad, student_file)
    with pytest.raises(ValueError, match=f"non-finite values in '{name}'"):
        _load(checkpoint, *_run(steps=0))

    missing = {k: v for k, v in good.items() if k != name}
    save_file(missing, student_file)
    with pytest.raises(ValueError, match=f"student.safetensors does not match the student.*missing \\['{name}'\\]"):
        _load(checkpoint, *_run(steps=0))

    save_file(good, student_file)
    (checkpoint / "optimizer.safetensors").unlink()
    with pytest.raises(ValueError, match="incomplete: optimizer.safetensors missing"):
        _load(checkpoint, *_run(steps=0))
