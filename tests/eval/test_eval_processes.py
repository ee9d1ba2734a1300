"""`snd eval` across processes: features split between two CPU processes, probes on the main one (snd_hf/eval/suite.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from snd_hf.cli import main
from snd_hf.demo import DEFAULT_CHECKPOINT

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_processes_give_the_results_of_one(tmp_path):
    def arguments(out):
        return ["eval", "all", "--model", f"tiny={DEFAULT_CHECKPOINT}", "--data", "synthetic", "--out", str(out),
                "--steps", "15", "--synthetic-size", "4x3x42x56"]  # fmt: skip

    assert main(arguments(tmp_path / "one")) == 0
    launcher = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533", "-m", "snd_hf.cli",
    ]  # fmt: skip
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(launcher + arguments(tmp_path / "two"), cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("# Probe results on synthetic4x3") == 1  # the table, printed by the main process alone
    one, two = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "two"))
    assert set(two["results"]) == {"depth", "normals", "segmentation", "correspondence"}
    assert two["results"] == one["results"] and two["final_training_loss"] == one["final_training_loss"]
    assert two["pictures"] == one["pictures"]
