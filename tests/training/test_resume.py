"""Settings the trainer refuses before any compute: a resume with other settings, limits that would
delete checkpoints, non-finite or absurd values, YAML tags; and a full disk during a checkpoint save
(issue 21, items 3, 7 and 8)."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from snd_hf.cli import run_with_errors
from snd_hf.training import TrainingConfig
from snd_hf.training.checkpoints import finalize_checkpoint, list_checkpoints, save_training_state, temporary_checkpoint_dir
from snd_hf.training.resume import SAFE_ON_RESUME, resume_changes, write_run_config

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN = REPO_ROOT / "training" / "train.py"


def _train_main():
    spec = importlib.util.spec_from_file_location("snd_train_script", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(argv: list[str], capsys) -> str:
    """train.py's exit status 2 and its one stderr line (as its ``__main__`` runs it)."""
    assert run_with_errors(_train_main(), argv, prog="train.py") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def started_run(tmp_path) -> tuple[Path, list[str]]:
    """An output_dir as a run of ``common`` leaves it after its step-2 checkpoint (the files the check reads)."""
    out = tmp_path / "run"
    common = ["--output_dir", str(out), "--max_steps", "2", "--image_size", "[28,42]", "--save_steps", "2"]
    (out / "checkpoints" / "step_2").mkdir(parents=True)
    (out / "losses.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    write_run_config(TrainingConfig.from_args(common))
    return out, common


@pytest.mark.parametrize(
    "change, shown",
    [
        (["--seed", "1"], "seed (0 -> 1)"),
        (["--learning_rate", "1e-3"], "learning_rate (0.0003 -> 0.001)"),
        (["--loss", "cosine"], "loss ('info_nce' -> 'cosine')"),
        (["--image_size", "[42,56]"], "image_size ([28, 42] -> [42, 56])"),
        (["--batch_size", "4", "--seed", "3"], "seed (0 -> 3), batch_size (2 -> 4)"),
    ],
)
def test_resume_with_other_settings_is_refused_naming_the_keys(started_run, capsys, change, shown):
    out, common = started_run
    before = _digests(out)
    error = _one_line_error([*common, "--max_steps", "4", "--resume_from_checkpoint", "latest", *change], capsys)
    assert error.startswith(f"train.py: error: --resume_from_checkpoint: the run in {out} was started with other settings")
    assert f"({out / 'config.yaml'}): {shown}. Resume with its settings" in error and "max_steps (" not in error
    assert _digests(out) == before


def test_safe_changes_are_accepted_and_recorded_in_config_yaml(started_run):
    out, common = started_run
    resumed = TrainingConfig.from_args([*common, "--max_steps", "4", "--save_steps", "1", "--resume_from_checkpoint", "latest"])
    assert resume_changes(resumed) == {"max_steps": (2, 4), "save_steps": (2, 1)}
    write_run_config(resumed)
    (out / "checkpoints" / "step_4").mkdir()
    again = TrainingConfig.from_args([*common, "--max_steps", "6", "--save_steps", "1", "--resume_from_checkpoint", "latest"])
    assert resume_changes(again) == {"max_steps": (4, 6)}
    write_run_config(again)
    text = (out / "config.yaml").read_text()
    assert text.splitlines()[:2] == [
        "# resumed from checkpoints/step_2: max_steps 2 -> 4, save_steps 2 -> 1",
        "# resumed from checkpoints/step_4: max_steps 4 -> 6",
    ]
    assert TrainingConfig.from_dict(yaml.safe_load(text)) == again  # the settings of the run as it now goes on
    # Nothing to resume from, or starting afresh: any settings.
    assert resume_changes(TrainingConfig.from_args([*common, "--seed", "5", "--overwrite_output_dir", "--resume_from_checkpoint", "latest"])) == {}
    assert {"max_steps", "save_steps", "log_steps", "checkpoints_total_limit"} <= set(SAFE_ON_RESUME)
    assert not {"seed", "learning_rate", "loss", "image_size", "batch_size"} & set(SAFE_ON_RESUME)


def test_a_moved_run_folder_resumes_and_records_the_move(started_run):
    out, common = started_run
    moved = out.with_name("moved")
    out.rename(moved)
    resumed = TrainingConfig.from_args([*common, "--output_dir", str(moved), "--max_steps", "4", "--resume_from_checkpoint", "latest"])
    assert resume_changes(resumed) == {"output_dir": (str(out), str(moved)), "max_steps": (2, 4)}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--checkpoints_total_limit", "-1"], "checkpoints_total_limit must be >= 1 (keep the newest N checkpoints) or null (keep all), got -1"),
        (["--checkpoints_total_limit", "0"], "checkpoints_total_limit must be >= 1 (keep the newest N checkpoints) or null (keep all), got 0"),
        (["--learning_rate", "nan"], "learning_rate must be a finite number, got nan"),
        (["--ema_momentum", "inf"], "ema_momentum must be a finite number, got inf"),
        (["--learning_rate", "0"], "learning_rate must be > 0, got 0.0"),
        (["--synthetic_size", "[100000,100000]"], "synthetic_size must be [H, W] with both within [14, 8192], got [100000, 100000]"),
        (["--synthetic_scenes", "0"], "synthetic_scenes must be >= 1, got 0"),
    ],
)
def test_bad_numbers_are_one_line_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    assert _one_line_error([*argv, "--output_dir", str(out)], capsys) == f"train.py: error: {message} (add --debug for the traceback)"
    assert not out.exists()


def test_a_limit_never_deletes_the_checkpoint_just_written(tmp_path):
    for step in (1, 2, 3):
        finalize_checkpoint(temporary_checkpoint_dir(tmp_path, step), total_limit=1)
        assert [p.name for p in list_checkpoints(tmp_path)] == [f"step_{step}"]
    for limit in (0, -1):
        with pytest.raises(ValueError, match=f"checkpoints_total_limit must be >= 1 or None \\(keep all\\), got {limit}"):
            finalize_checkpoint(temporary_checkpoint_dir(tmp_path, 4), total_limit=limit)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_3"]


def test_yaml_tags_are_one_line_and_never_run(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f"seed: 1\nmax_steps: !!python/object/apply:os.mkdir [{str(marker)!r}]\n")
    error = _one_line_error(["--config", str(config), "--output_dir", str(tmp_path / "never")], capsys)
    assert error.startswith(f"train.py: error: {config}: could not determine a constructor for the tag")
    assert "tag:yaml.org,2002:python/object/apply:os.mkdir" in error and "(line 2)" in error
    assert not marker.exists() and not (tmp_path / "never").exists()
    config.write_text("seed: 1\nlearning_rate: .nan\n")
    error = _one_line_error(["--config", str(config), "--output_dir", str(tmp_path / "never")], capsys)
    assert error == f"train.py: error: {config}: learning_rate must be a finite number, got nan (add --debug for the traceback)"


SAVE_WITH_A_FILE_SIZE_LIMIT = """
import resource, sys
import torch
from snd_hf.training.checkpoints import save_training_state, temporary_checkpoint_dir
model = torch.nn.Linear(200, 200)
optimizer = torch.optim.AdamW(model.parameters())
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
directory = temporary_checkpoint_dir(sys.argv[1], 3)
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
try:
    save_training_state(directory, modules={"student": model}, optimizer=optimizer, scheduler=scheduler, trainer_state={"step": 3})
except OSError as error:
    print(type(error).__name__, error)
    sys.exit(3)
"""


def test_full_disk_during_a_checkpoint_save_is_the_package_s_out_of_room_error(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-c", SAVE_WITH_A_FILE_SIZE_LIMIT, str(tmp_path)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )  # fmt: skip
    assert finished.returncode == 3, finished.stderr[-2000:]
    assert finished.stdout.startswith(
        f"OutOfRoomError cannot write {tmp_path / 'checkpoints' / 'step_3'}: no space left on the device / file too large"
    ), finished.stdout
    assert "SafetensorError" not in finished.stdout and list_checkpoints(tmp_path) == []


def test_the_checkpoint_saver_refuses_non_finite_tensors(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    optimizer.state[model.weight]["exp_avg_sq"][0, 0] = float("inf")  # the weights themselves are finite
    directory = temporary_checkpoint_dir(tmp_path, 1)
    with pytest.raises(ValueError, match=r"refusing to write .*optimizer.safetensors: '.*exp_avg_sq' holds non-finite values"):
        save_training_state(directory, modules={"student": model}, optimizer=optimizer, scheduler=scheduler, trainer_state={"step": 1})
    assert list_checkpoints(tmp_path) == []
