"""`python training/train.py --help`: every config key, its default and its meaning."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import yaml

from snd_hf.training import TrainingConfig
from snd_hf.training.usage import config_keys_help, training_help

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_every_key_has_a_meaning_from_the_dataclass_comments():
    keys = config_keys_help()
    assert [key.name for key in keys] == TrainingConfig.keys()  # all of them, in order
    undocumented = [key.name for key in keys if not key.meaning]
    assert not undocumented, f"add a comment to these TrainingConfig fields: {undocumented}"
    by_name = {key.name: key for key in keys}
    assert by_name["max_steps"].meaning == "optimizer steps" and by_name["max_steps"].section == "run"
    # a comment on the lines above a field counts too
    assert by_name["lora_targets"].meaning.startswith("The original's suffix match on")
    assert by_name["on_nonfinite"].annotation == 'Literal["stop", "skip"]'


def test_help_lists_each_key_with_the_default_of_a_plain_run():
    text = training_help(config_dir=REPO_ROOT / "training" / "configs")
    defaults = TrainingConfig.from_args([], config_dir=REPO_ROOT / "training" / "configs")
    for key in TrainingConfig.keys():
        shown = yaml.safe_dump(getattr(defaults, key), default_flow_style=True).strip().removesuffix("...").strip()
        assert f"  --{key} (" in text and f"default: {shown}" in text.split(f"  --{key} (", 1)[1].splitlines()[0], key
    assert "  --mixed_precision (no|bf16|fp16), default: 'no'" in text
    assert "--dataset_path (str | None), default: data/synthetic-tiny  (synthetic_tiny; built in: null)" in text


def test_train_script_help_and_h_print_it_and_exit_zero(capsys):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "training" / "train.py"), "--max_steps", "3", "-h"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: python training/train.py [--config NAME_OR_PATH]")
    assert "Train SnD: distil the teacher" in result.stdout and "  --warmup_ratio (float), default: 0.01" in result.stdout

    spec = importlib.util.spec_from_file_location("snd_train_script", REPO_ROOT / "training" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    assert train.main(["--help"]) == 0
    assert capsys.readouterr().out == result.stdout
