"""`python training/train.py --help`: every config key, its meaning (the field's metadata) and the
default of a plain run, from transformers' HfArgumentParser."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import yaml

from snd_hf.training import TrainingConfig
from snd_hf.training.config import TrainingArgumentParser

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "training" / "configs"


def test_every_key_has_a_meaning_in_its_field_metadata():
    undocumented = [field.name for field in dataclasses.fields(TrainingConfig) if not field.metadata.get("help")]
    assert not undocumented, f"give these TrainingConfig fields a metadata help: {undocumented}"
    by_name = {field.name: field.metadata["help"] for field in dataclasses.fields(TrainingConfig)}
    assert by_name["max_steps"] == "optimizer steps"
    assert "the original's suffix match on qkv/proj" in by_name["lora_targets"]


def test_help_lists_each_key_with_its_meaning_and_the_default_of_a_plain_run():
    text = " ".join(TrainingArgumentParser(config_dir=CONFIGS).format_help().split())  # argparse wraps to the terminal
    defaults = TrainingConfig.from_args([], config_dir=CONFIGS)
    for field in dataclasses.fields(TrainingConfig):
        shown = yaml.safe_dump(getattr(defaults, field.name), default_flow_style=True).strip().removesuffix("...").strip()
        assert f" --{field.name} " in text, field.name
        assert f"{' '.join(field.metadata['help'].split())} (default: {shown})" in text, field.name
    assert "--mixed_precision {no,bf16,fp16}" in text and "(fp16 adds loss scaling) (default: 'no')" in text
    assert "cache dir (default: data/synthetic-tiny)" in text  # the default config's value, not the dataclass's null
    assert "--config NAME_OR_PATH" in text and "scannetpp_vits14" in text


def test_train_script_help_and_h_print_it_and_exit_zero(capsys, monkeypatch):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "100"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "training" / "train.py"), "--max_steps", "3", "-h"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: python training/train.py [--config NAME_OR_PATH]")
    text = " ".join(result.stdout.split())
    assert "Train SnD: distil the teacher" in text and "--warmup_ratio WARMUP_RATIO" in text
    assert "one-cycle cosine schedule (OneCycleLR pct_start) (default: 0.01)" in text

    spec = importlib.util.spec_from_file_location("snd_train_script", REPO_ROOT / "training" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    monkeypatch.setenv("COLUMNS", "100")  # the same wrapping as the subprocess's
    assert train.main(["--help"]) == 0
    assert capsys.readouterr().out == result.stdout
