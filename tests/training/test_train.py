"""End-to-end tests of training/train.py on tiny generated scenes (CPU, no network).

Each run is a real subprocess of the script, as a user launches it; the scenes are generated
once per module and shared.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from snd_hf import SnDModel
from snd_hf.training import TrainingConfig, list_checkpoints
from snd_hf.training.builders import prepare_scenes

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN = REPO_ROOT / "training" / "train.py"
DEFAULTS = TrainingConfig.from_args([])
# A shorter run than the default for the resume/DDP/Hub tests.
QUICK = ["--max_steps", "6", "--save_steps", "3", "--image_size", "[28,42]"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """The default run's scenes, generated once for the module."""
    return prepare_scenes(TrainingConfig(dataset_path=str(tmp_path_factory.mktemp("scenes") / "synthetic")), progress=False)


def _env(**extra: str) -> dict[str, str]:
    # One thread per process: the tiny model gains nothing from more, and on a busy machine
    # contended OpenMP threads slow every small op down by orders of magnitude.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("SND_TRAIN_TEST_KILL", None)
    env.update(extra)
    return env


def _train(args: list[str], *, launcher: list[str] | None = None, expect_rc: int = 0, **env: str) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable]) + [str(TRAIN), *args]
    result = subprocess.run(command, cwd=REPO_ROOT, env=_env(**env), capture_output=True, text=True, timeout=600)
    assert result.returncode == expect_rc, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def _losses(output_dir: Path) -> dict[int, float]:
    """The last logged loss of every step (a resumed run appends the steps it redoes)."""
    losses = {}
    for line in (output_dir / "losses.jsonl").read_text().splitlines():
        record = json.loads(line)
        losses[record["step"]] = record["loss"]
    return losses


@pytest.mark.slow
def test_default_run_learns_and_exports(scenes, tmp_path):
    output_dir = tmp_path / "run"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = _train(["--output_dir", str(output_dir), "--dataset_path", str(scenes)])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Budget: 5 minutes on 2 cores. CPU time, so that other load on a shared machine does not count.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"default run: {time.perf_counter() - start:.0f} s wall, {cpu:.0f} s CPU")
    assert cpu / 2 < 300, f"the default run used {cpu:.0f} CPU seconds (budget: 300 s on 2 cores)"

    losses = _losses(output_dir)
    assert sorted(losses) == list(range(1, DEFAULTS.max_steps + 1))
    first, last = [sum(v) / len(v) for v in (list(losses.values())[:10], list(losses.values())[-10:])]
    assert last < first - 0.05, f"loss did not fall: first 10 steps {first:.4f}, last 10 {last:.4f}"

    student = SnDModel.from_pretrained(output_dir)
    auto = AutoModel.from_pretrained(output_dir)
    teacher = SnDModel.from_pretrained(output_dir / "teacher")
    assert student.config.training_info["step"] == DEFAULTS.max_steps
    assert student.config.training_info["config"]["learning_rate"] == DEFAULTS.learning_rate
    assert student.config.blending is False  # the CPU recipe does not blend
    # The collapse diagnostics are logged every step, and the healthy default run is not flagged.
    record = json.loads((output_dir / "losses.jsonl").read_text().splitlines()[-1])
    assert {"coverage", "student_rank", "target_rank"} <= set(record) and record["coverage"] > 0.5
    assert "looks collapsed" not in result.stderr
    pixels = torch.rand(1, 3, *DEFAULTS.image_size)
    with torch.no_grad():
        torch.testing.assert_close(auto(pixels).feature_map, student(pixels).feature_map)
        assert not torch.allclose(teacher(pixels).feature_map, student(pixels).feature_map)
    original = SnDModel.from_original_checkpoint(
        output_dir / "student_original.pth", num_attention_heads=DEFAULTS.num_attention_heads
    )
    with torch.no_grad():
        torch.testing.assert_close(original(pixels).feature_map, student(pixels).feature_map, atol=1e-5, rtol=1e-5)
    steps = [int(p.name.split("_")[1]) for p in list_checkpoints(output_dir)]
    assert steps == list(range(DEFAULTS.save_steps, DEFAULTS.max_steps + 1, DEFAULTS.save_steps))


@pytest.mark.slow
def test_kill_during_save_then_resume_matches_uninterrupted_run(scenes, tmp_path):
    common = [*QUICK, "--dataset_path", str(scenes)]
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    _train([*common, "--output_dir", str(reference)])
    # SIGKILL once the step-6 checkpoint is written but not yet renamed into place.
    _train([*common, "--output_dir", str(interrupted)], expect_rc=-9, SND_TRAIN_TEST_KILL="during_save:6")
    assert [p.name for p in list_checkpoints(interrupted)] == ["step_3"]
    assert (interrupted / "checkpoints" / ".tmp-step_6").is_dir()
    _train([*common, "--output_dir", str(interrupted), "--resume_from_checkpoint", "latest"])

    expected, resumed = _losses(reference), _losses(interrupted)
    assert sorted(resumed) == sorted(expected) == list(range(1, 7))
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), f"step {step}"
    final = load_file(interrupted / "model.safetensors")
    for name, tensor in load_file(reference / "model.safetensors").items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_end_with_identical_weights(scenes, tmp_path):
    output_dir = tmp_path / "ddp"
    launcher = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", "29517",
    ]  # fmt: skip
    _train(
        [*QUICK, "--dataset_path", str(scenes), "--output_dir", str(output_dir)],
        launcher=launcher,
        ACCELERATE_USE_CPU="true",
        SND_TRAIN_TEST_DUMP_RANKS="1",
    )
    rank0, rank1 = (load_file(output_dir / f"rank{r}_state.safetensors") for r in (0, 1))
    assert rank0.keys() == rank1.keys() and len(rank0) > 0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert len(_losses(output_dir)) == 6


def test_push_to_hub_uploads_a_loadable_repo_with_card(scenes, tmp_path, hub):
    output_dir = tmp_path / "pushed"
    _train(
        [*QUICK, "--max_steps", "2", "--dataset_path", str(scenes), "--output_dir", str(output_dir),
         "--push_to_hub", "--hub_model_id", "me/snd-tiny"]
    )  # fmt: skip
    files = hub.files("me/snd-tiny")
    assert set(files) >= {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"}
    assert not any(name.startswith("checkpoints/") for name in files)
    assert b"snd" in files["README.md"].lower()
    pushed = SnDModel.from_pretrained("me/snd-tiny")
    local = SnDModel.from_pretrained(output_dir)
    for (name, a), (_, b) in zip(pushed.state_dict().items(), local.state_dict().items()):
        assert torch.equal(a, b), name


def _load_train_module():
    spec = importlib.util.spec_from_file_location("snd_train_script", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--learning_rat", "1e-4"], "Unknown training config key"),
        (["--config", "scannetpp_vits14"], "dataset_path is required"),
        (["--config", "scannetpp_vits14", "--dataset_path", "/nonexistent/scannetpp"], "has no scenes/ folder"),
        (["--config", "scannetpp_vits14", "--dataset_path", "{scenes_root}"], "mvsplat_checkpoint is required"),
        (["--init", "original", "--model_path", "/nonexistent/dinov2.pth"], "model_path '/nonexistent/dinov2.pth' does not exist"),
    ],
)
def test_bad_configs_fail_before_any_compute(argv, message, tmp_path):
    (tmp_path / "root" / "scenes").mkdir(parents=True)
    argv = [a.replace("{scenes_root}", str(tmp_path / "root")) for a in argv]
    output_dir = tmp_path / "never"
    train = _load_train_module()
    with pytest.raises(ValueError, match=message):
        train.main([*argv, "--output_dir", str(output_dir)])
    assert not output_dir.exists()  # nothing was set up, generated or written
