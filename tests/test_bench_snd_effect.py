"""benchmarks/bench_snd_effect.py: two processes score exactly what one process scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_processes_give_the_rows_of_one(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    common = ["--runs", "snd", "--steps", "3", "--rooms", "8", "--work_dir", str(tmp_path / "work")]
    common += ["--synthetic_scenes", "2", "--synthetic_frames", "12"]
    rows = {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}.json"
        command = [sys.executable, "benchmarks/bench_snd_effect.py", *common, "--processes", str(processes), "--out", str(out)]
        subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=900)
        rows[processes] = json.loads(out.read_text())
    assert list(rows[2]) == list(rows[1]) == ["init", "snd", "meta"]
    assert rows[2]["meta"]["distinct_pairs"] == {"gap4": 8, "gap8": 8} and rows[2]["meta"]["probe_images"] == 48
    for name in ("init", "snd"):
        assert rows[2][name] == rows[1][name], name
    assert rows[1]["snd"]["gap4_R@10"] != rows[1]["init"]["gap4_R@10"] or rows[1]["snd"]["seg_miou"] != rows[1]["init"]["seg_miou"]
