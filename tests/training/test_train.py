"""End-to-end tests of training/train.py on tiny generated scenes (CPU, no network).

Each run is a real subprocess of the script, as a user launches it; the scenes are generated
once per module and shared.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import pickle
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from snd_hf import SnDModel
from snd_hf.files import TEMPORARY_TAG, is_temporary
from snd_hf.training import TrainingConfig, list_checkpoints
from snd_hf.initial_weights import PRETRAINED_2D
from snd_hf.training.builders import prepare_scenes
from snd_hf.training.config import TrainingArgumentParser
from snd_hf.training.loop import changed_settings
from snd_hf.training.schedule import SPARE_STEPS, one_cycle_factor

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN = REPO_ROOT / "training" / "train.py"
# train.py with the faults SND_TRAIN_TEST_KILL / SND_TRAIN_TEST_DUMP_RANKS as loop callbacks.
TRAIN_WITH_FAULTS = Path(__file__).with_name("train_with_faults.py")
DEFAULTS = TrainingConfig.from_args([])
# A shorter run than the default for the resume/Hub/reliability tests.
QUICK = ["--max_steps", "6", "--save_steps", "3", "--image_size", "[28,42]"]
# Runs train.py with one NaN pixel in sample 1 of the POISON_CALL-th batch this process trains on.
POISON = """
import os, runpy, sys
import snd_hf.training.step as step

original, calls = step.teacher_targets, 0

def poisoned(teacher, splat_teacher, batch, *args):
    global calls
    calls += 1
    if calls == int(os.environ["POISON_CALL"]):
        batch["target"]["image"][1, 0, 0, 3, 4] = float("nan")
        context, target = (batch["index"][part][1].tolist() for part in ("context", "target"))
        print(f"POISONED scene {batch['scene'][1]!r} (context frames {context}, target frames {target}", file=sys.stderr)
    return original(teacher, splat_teacher, batch, *args)

step.teacher_targets = poisoned
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


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
    """Run train.py (after ``launcher``, default python) and check its exit code; with test faults in ``env``, through the fault wrapper."""
    script = TRAIN_WITH_FAULTS if any(name.startswith("SND_TRAIN_TEST_") for name in env) else TRAIN
    command = (launcher or [sys.executable]) + [str(script), *args]
    result = subprocess.run(command, cwd=REPO_ROOT, env=_env(**env), capture_output=True, text=True, timeout=600)
    assert result.returncode == expect_rc, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def _records(output_dir: Path) -> list[dict]:
    """losses.jsonl, each line strict JSON (a bare NaN or Infinity fails)."""
    return [json.loads(line, parse_constant=pytest.fail) for line in (output_dir / "losses.jsonl").read_text().splitlines()]


def _losses(output_dir: Path) -> dict[int, float]:
    """The loss of every step; each step must be logged exactly once."""
    records = _records(output_dir)
    steps = [record["step"] for record in records]
    assert steps == sorted(set(steps)), f"steps logged more than once or out of order: {steps}"
    return {record["step"]: record["loss"] for record in records}


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _all_weights_finite(folder: Path) -> None:
    for path in folder.rglob("*.safetensors"):
        for name, tensor in load_file(path).items():
            assert not tensor.is_floating_point() or torch.isfinite(tensor).all(), f"{path}: {name}"


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
    # InfoNCE over ~380 covered tokens starts near 3.86 nats from the 2D-pretrained start (chance:
    # ln 384 = 5.95) and ends near 2.90 in the packaged run (the EMA teacher's targets sharpen with
    # the student); neighbouring tokens' targets are close, and a batch holds each point of a room
    # in up to 4 target views, so the floor is far from 0.
    assert last < first - 0.4, f"loss did not fall: first 10 steps {first:.4f}, last 10 {last:.4f}"

    student = SnDModel.from_pretrained(output_dir)
    auto = AutoModel.from_pretrained(output_dir)
    teacher = SnDModel.from_pretrained(output_dir / "teacher")
    assert student.config.training_info["step"] == DEFAULTS.max_steps
    assert student.config.training_info["config"]["learning_rate"] == DEFAULTS.learning_rate
    assert student.config.blending is False  # the CPU recipe does not blend
    # The EMA teacher followed the student away from the 2D-pretrained start: in the packaged run it
    # ends 9.20 (L2 over all weights) from the start and 0.017 from the student, whose rate has decayed.
    start = SnDModel.from_pretrained(PRETRAINED_2D).state_dict()
    teacher_weights, student_weights = teacher.state_dict(), student.state_dict()

    def distance(a, b):
        return sum(((a[key] - b[key]) ** 2).sum() for key in start).sqrt().item()

    assert distance(teacher_weights, start) > 20 * distance(teacher_weights, student_weights) > 0
    # The collapse diagnostics are logged every step, and the healthy default run is not flagged.
    record = json.loads((output_dir / "losses.jsonl").read_text().splitlines()[-1])
    assert {"coverage", "student_rank", "target_rank"} <= set(record) and record["coverage"] > 0.5
    # Effective ranks 18.7 (student) / 14.2 (targets) at step 1 and 32.1 / 27.7 at the end of the
    # packaged run: the EMA bootstrap spreads the features out rather than collapsing them.
    assert record["student_rank"] > 24 and record["target_rank"] > 24, record
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
    assert json.loads((output_dir / "export.json").read_text())["step"] == DEFAULTS.max_steps


@pytest.mark.slow
def test_kill_during_save_then_resume_matches_uninterrupted_run(scenes, tmp_path):
    common = [*QUICK, "--dataset_path", str(scenes)]
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    _train([*common, "--output_dir", str(reference)])
    # SIGKILL once the step-6 checkpoint is written but not yet renamed into place.
    _train([*common, "--output_dir", str(interrupted)], expect_rc=-9, SND_TRAIN_TEST_KILL="during_save:6")
    assert [p.name for p in list_checkpoints(interrupted)] == ["step_3"]
    assert [p.name.partition(TEMPORARY_TAG)[0] for p in (interrupted / "checkpoints").iterdir() if is_temporary(p)] == [".step_6"]
    assert [r["step"] for r in _records(interrupted)] == [1, 2, 3, 4, 5, 6]  # logged before the kill
    resumed_run = _train([*common, "--output_dir", str(interrupted), "--resume_from_checkpoint", "latest"])
    assert re.search(f"removed temporaries of a killed run: checkpoints/\\.step_6{TEMPORARY_TAG}", resumed_run.stdout)

    expected, resumed = _losses(reference), _losses(interrupted)
    # One line per step: the resumed run dropped the killed run's lines after step 3, then redid them.
    assert [r["step"] for r in _records(interrupted)] == list(range(1, 7))
    assert sorted(resumed) == sorted(expected) == list(range(1, 7))
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), f"step {step}"
    final = load_file(interrupted / "model.safetensors")
    for name, tensor in load_file(reference / "model.safetensors").items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_run_the_default_config_with_the_one_process_schedule(scenes, tmp_path):
    # The README's command: with the per-process OneCycleLR its warm-up rounded to 0 steps
    # (ZeroDivisionError). Now the rate is a function of the optimizer step alone.
    output_dir = tmp_path / "ddp"
    steps = 40  # the default config otherwise; its 1500 steps run in test_default_run_learns_and_exports
    launcher = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", "29517",
    ]  # fmt: skip
    _train(
        ["--dataset_path", str(scenes), "--output_dir", str(output_dir), "--max_steps", str(steps)],
        launcher=launcher,
        ACCELERATE_USE_CPU="true",
        SND_TRAIN_TEST_DUMP_RANKS="1",
    )
    rank0, rank1 = (load_file(output_dir / f"rank{r}_state.safetensors") for r in (0, 1))
    assert rank0.keys() == rank1.keys() and len(rank0) > 0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    records = _records(output_dir)
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    total = steps + SPARE_STEPS
    for record in records:
        expected = DEFAULTS.learning_rate * one_cycle_factor(record["step"] - 1, total, DEFAULTS.warmup_ratio)
        assert record["lr"] == pytest.approx(expected, rel=1e-9), record


@pytest.mark.slow
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
    # save_pretrained writes the package's card beside the weights too (the pushed one names the Hub repo).
    assert all(b"import snd_hf" in card for card in (files["README.md"], (output_dir / "README.md").read_bytes()))
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
        (["--config", "scannetpp_vits14", "--dataset_path", "/nonexistent/scannetpp"], "dataset_path '/nonexistent/scannetpp' does not exist"),
        (["--config", "scannetpp_vits14", "--dataset_path", "{user_data}"], "has no scenes/ folder"),
        (["--config", "scannetpp_vits14", "--dataset_path", "{scenes_root}"], "mvsplat_checkpoint is required"),
        (["--init", "original", "--model_path", "/nonexistent/dinov2.pth"], "model_path '/nonexistent/dinov2.pth' does not exist"),
        (["--warmup_ratio", "1.5"], r"warmup_ratio must be in \[0, 1\]"),
        (["--max_skipped_steps", "-1"], "max_skipped_steps must be >= 0"),
        (["--on_nonfinite", "ignore"], r"on_nonfinite must be one of \['stop', 'skip'\]"),
        # A user's dataset is never replaced by generated scenes (the default dataset is synthetic).
        (["--dataset_path", "{user_data}"], r"holds data the package did not generate \(files it did not generate \(keep.txt\)\)"),
        (["--dataset_path", "{scenes_root}"], "no snd_synthetic.json"),
    ],
)
def test_bad_configs_fail_before_any_compute(argv, message, tmp_path):
    (tmp_path / "root" / "scenes").mkdir(parents=True)
    (tmp_path / "mydata").mkdir()
    (tmp_path / "mydata" / "keep.txt").write_text("precious")
    argv = [a.replace("{scenes_root}", str(tmp_path / "root")).replace("{user_data}", str(tmp_path / "mydata")) for a in argv]
    output_dir = tmp_path / "never"
    train = _load_train_module()
    with pytest.raises(ValueError, match=message):
        train.main([*argv, "--output_dir", str(output_dir)])
    assert not output_dir.exists()  # nothing was set up, generated or written
    assert (tmp_path / "mydata" / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["scenes"]


@pytest.mark.slow
def test_accelerate_launch_quiet_leaves_our_one_line_alone(tmp_path):
    # accelerate's single-process launcher raises CalledProcessError, traceback and all, after any non-zero exit
    # of the script: train.py cannot avoid it (README, Train). Its --quiet (-q) leaves the script's own line.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    argv = ["--dataset", "scannetpp", "--dataset_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out")]
    line = f"train.py: error: dataset_path '{tmp_path / 'missing'}' does not exist (the ScanNet++ folder holding scenes/) (add --debug for the traceback)"
    loud = _train(argv, launcher=launcher, expect_rc=1)
    assert line in loud.stderr.splitlines() and "subprocess.CalledProcessError" in loud.stderr
    quiet = _train(argv, launcher=[*launcher, "-q"], expect_rc=1)
    assert line in quiet.stderr.splitlines() and "Traceback" not in quiet.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_used_output_dir_resume_overwrite_and_a_kill_during_the_final_export(scenes, tmp_path):
    out = tmp_path / "run"
    # Accumulating 2 micro-batches per step: the schedule still moves once per optimizer step.
    common = ["--dataset_path", str(scenes), "--output_dir", str(out), "--image_size", "[28,42]", "--save_steps", "2", "--gradient_accumulation_steps", "2"]
    _train([*common, "--max_steps", "2"])
    records = _records(out)
    assert [r["step"] for r in records] == [1, 2]
    assert [r["lr"] for r in records] == pytest.approx([DEFAULTS.learning_rate * one_cycle_factor(s, 2 + SPARE_STEPS, 0.01) for s in (0, 1)])
    first_export = {name: digest for name, digest in _digests(out).items() if not name.startswith(("checkpoints", "losses", "config.yaml"))}

    # The same command again: refused before anything, the folder untouched.
    before = _digests(out)
    with pytest.raises(ValueError, match="is not empty.*--resume_from_checkpoint latest.*--overwrite_output_dir"):
        _load_train_module().main([*common, "--max_steps", "2"])
    assert _digests(out) == before

    # Killed once the step-4 export is written but before it is swapped in: the step-2 export stays whole.
    resume = [*common, "--max_steps", "4", "--resume_from_checkpoint", "latest"]
    _train(resume, expect_rc=-9, SND_TRAIN_TEST_KILL="during_export:4")
    assert {name: _digests(out)[name] for name in first_export} == first_export
    assert [p.name.partition(TEMPORARY_TAG)[0] for p in out.iterdir() if is_temporary(p)] == [".export"]
    # The next run removes the leftover and swaps the step-4 export in, identical to its checkpoint's.
    finished = _train(resume)
    assert re.search(f"removed temporaries of a killed run: \\.export{TEMPORARY_TAG}", finished.stdout)
    final, checkpoint = _digests(out), _digests(out / "checkpoints" / "step_4" / "export")
    # (a .pth archive records its temporary file's name, so those compare by their tensors)
    assert {name: final[name] for name in checkpoint if not name.endswith(".pth")} == {
        name: digest for name, digest in checkpoint.items() if not name.endswith(".pth")
    }
    for name in ("student_original.pth", "teacher_original.pth"):
        exported, saved = (torch.load(d / name, weights_only=True) for d in (out, out / "checkpoints" / "step_4" / "export"))
        assert exported.keys() == saved.keys() and all(torch.equal(exported[k], saved[k]) for k in saved), name
    assert json.loads((out / "export.json").read_text())["step"] == 4
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary left, nor the lock file
    assert [r["step"] for r in _records(out)] == [1, 2, 3, 4]

    # A checkpoint folder with a pickle payload is refused; the payload never runs.
    planted = tmp_path / "planted" / "step_4"
    shutil.copytree(out / "checkpoints" / "step_4", planted)
    marker = tmp_path / "payload-ran"
    (planted / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    refused = _train([*common, "--max_steps", "6", "--resume_from_checkpoint", str(planted)], expect_rc=2)
    assert "holds files this trainer never writes (custom_checkpoint_0.pkl)" in refused.stderr
    assert not marker.exists()

    # --overwrite_output_dir starts again: the earlier run's outputs go, a user's file stays.
    (out / "notes.txt").write_text("mine")
    _train([*common, "--max_steps", "2", "--overwrite_output_dir"])
    assert [p.name for p in list_checkpoints(out)] == ["step_2"]
    assert [r["step"] for r in _records(out)] == [1, 2]
    assert (out / "notes.txt").read_text() == "mine"


class _Payload:
    """Unpickling this object creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.slow
def test_nan_pixel_stops_the_run_and_leaves_every_saved_file_untouched(scenes, tmp_path):
    out, script = tmp_path / "run", tmp_path / "poison.py"
    script.write_text(POISON)
    common = ["--dataset_path", str(scenes), "--output_dir", str(out), "--image_size", "[28,42]", "--save_steps", "2"]
    _train([*common, "--max_steps", "2"])
    good = {name: digest for name, digest in _digests(out).items() if name not in ("losses.jsonl", "config.yaml")}

    # Step 3 (the first after resuming) gets one NaN pixel: the run stops there, naming the sample.
    poisoned = _train(
        [*common, "--max_steps", "6", "--resume_from_checkpoint", "latest"],
        launcher=[sys.executable, str(script)], expect_rc=2, POISON_CALL="1",
    )  # fmt: skip
    sample = poisoned.stderr.split("POISONED ", 1)[1].splitlines()[0]
    assert "train.py: error: non-finite loss at step 3; its samples:" in poisoned.stderr
    assert f"{sample}; non-finite input: target image)" in poisoned.stderr
    after = _digests(out)
    assert {name: after[name] for name in good} == good  # the earlier checkpoint and export, byte for byte
    assert [p.name for p in list_checkpoints(out)] == ["step_2"]
    records = _records(out)
    assert [r["step"] for r in records] == [1, 2, 3] and records[2]["loss"] is None
    _all_weights_finite(out)

    # With --on_nonfinite skip the step is dropped and the run goes on.
    skipped = _train(
        [*common, "--max_steps", "4", "--resume_from_checkpoint", "latest", "--on_nonfinite", "skip"],
        launcher=[sys.executable, str(script)], POISON_CALL="1",
    )  # fmt: skip
    assert "warning: skipped step 3: non-finite loss at step 3" in skipped.stdout
    records = _records(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[2]["loss"] is None and math.isfinite(records[3]["loss"])
    assert json.loads((out / "checkpoints" / "step_4" / "trainer_state.json").read_text())["skipped_steps"] == [3]
    _all_weights_finite(out)


@pytest.mark.slow
def test_huge_learning_rate_stops_at_the_first_non_finite_step(scenes, tmp_path):
    out = tmp_path / "run"
    result = _train(
        ["--dataset_path", str(scenes), "--output_dir", str(out), *QUICK, "--save_steps", "1", "--learning_rate", "1e30"],
        expect_rc=2,
    )  # fmt: skip
    records = _records(out)
    bad = next(r["step"] for r in records if r["loss"] is None)
    assert f"non-finite loss at step {bad}; its samples: scene " in result.stderr
    assert [r["step"] for r in records] == list(range(1, bad + 1))
    assert [p.name for p in list_checkpoints(out)] == [f"step_{s}" for s in range(1, bad)]
    assert not (out / "model.safetensors").exists()  # no final export of a broken run
    _all_weights_finite(out)


@pytest.mark.slow
def test_benchmark_snd_run_and_train_py_give_bit_identical_weights(scenes, tmp_path):
    """benchmarks/bench_snd_effect.py trains through snd_hf.training.loop.train, as train.py does."""
    spec = importlib.util.spec_from_file_location("bench_snd_effect", REPO_ROOT / "benchmarks" / "bench_snd_effect.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # as an import does: its dataclasses look their module up there
    try:
        spec.loader.exec_module(bench)
    finally:
        del sys.modules[spec.name]
    shared = ["--image_size", "[28,42]", "--dataset_path", str(scenes), "--max_steps", "5"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the train.py subprocess (OMP_NUM_THREADS=1): float sums depend on it
    try:
        config = bench.run_config("snd", bench.common_arguments(0, tmp_path, 5, shared) + ["--output_dir", str(tmp_path / "bench")])
        bench.train(config)
    finally:
        torch.set_num_threads(threads)
    _train([*shared, "--seed", "0", "--output_dir", str(tmp_path / "script")])
    from_bench, from_script = (load_file(tmp_path / run / "model.safetensors") for run in ("bench", "script"))
    assert from_bench.keys() == from_script.keys()
    for name, tensor in from_script.items():
        assert torch.equal(from_bench[name], tensor), name


def test_start_line_lists_what_the_command_line_changed_from_its_recipe():
    # dataset_path comes from the recipe (synthetic_tiny.yaml), not from the user: it is not "changed".
    recipe_path = REPO_ROOT / "training" / "configs" / "synthetic_tiny.yaml"
    config, recipe = TrainingArgumentParser(config_dir=recipe_path.parent).parse_with_recipe(["--max_steps", "20"])
    assert recipe == recipe_path and config.dataset_path == "data/synthetic-tiny"
    assert changed_settings(config, recipe) == f"changed from {recipe_path}: max_steps=20"
    plain, recipe = TrainingArgumentParser(config_dir=recipe_path.parent).parse_with_recipe([])
    assert changed_settings(plain, recipe) == f"changed from {recipe_path}: none"
    # Without a recipe (a Python caller of the loop) the baseline is the dataclass, whose dataset_path is null.
    assert changed_settings(config) == "changed from the TrainingConfig defaults: max_steps=20, dataset_path=data/synthetic-tiny"


def _start_line(result: subprocess.CompletedProcess) -> str:
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("SnD training on")]
    return line


@pytest.mark.slow
def test_cpu_runs_use_one_thread_unless_omp_num_threads_says_otherwise(scenes, tmp_path):
    # The default of train.py on a CPU is one torch thread (it gives the weights of OMP_NUM_THREADS=1
    # bit for bit); OMP_NUM_THREADS, when set, is the user's choice and is kept.
    argv = ["--dataset_path", str(scenes), "--image_size", "[28,42]"]
    env = {key: value for key, value in _env().items() if key != "OMP_NUM_THREADS"}

    def run(name: str, steps: int, **extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, str(TRAIN), *argv, "--max_steps", str(steps), "--output_dir", str(tmp_path / name)]
        result = subprocess.run(command, cwd=REPO_ROOT, env={**env, **extra}, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    unset, one, two = run("unset", 2), run("one", 2, OMP_NUM_THREADS="1"), run("two", 1, OMP_NUM_THREADS="2")
    assert "cpu (1 torch thread(s))" in _start_line(unset) and "cpu (1 torch thread(s))" in _start_line(one)
    assert "cpu (2 torch thread(s))" in _start_line(two)
    default, single = (load_file(tmp_path / name / "model.safetensors") for name in ("unset", "one"))
    assert default.keys() == single.keys() and all(torch.equal(default[key], single[key]) for key in single)
    # The start line names the recipe and only the keys given on the command line.
    recipe = REPO_ROOT / "training" / "configs" / "synthetic_tiny.yaml"
    changed = _start_line(unset).partition(f"changed from {recipe}: ")[2]
    assert re.findall(r"(?:^|, )(\w+)=", changed) == ["output_dir", "max_steps", "dataset_path", "image_size"]
