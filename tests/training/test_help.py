"""`python training/train.py --help`: every config key, its meaning (the field's metadata) and the
default of a plain run, from transformers' HfArgumentParser."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
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


def test_help_shows_each_key_once_and_both_spellings_parse():
    text = TrainingArgumentParser(config_dir=CONFIGS).format_help()
    for field in dataclasses.fields(TrainingConfig):
        assert len(re.findall(rf"--{field.name}\b(?!-)", text)) == 1, field.name  # the option, not --no_{name}
        if "_" in field.name:
            assert f"--{field.name.replace('_', '-')}" not in text, field.name
    assert "--no_cache_views" in text and "--no-cache-views" not in text
    assert re.search(r"--no_cache_views\s+set cache_views to false", text)  # not the key's own help, its opposite
    kebab = TrainingArgumentParser(config_dir=CONFIGS).parse(["--max-steps", "7", "--no-cache-views"])
    assert (kebab.max_steps, kebab.cache_views) == (7, False)


# Each command line in one fresh interpreter: --help and argument errors must not load torch.
_NO_TORCH_CHECK = """
import importlib.util, json, sys
from snd_hf.cli import run_with_errors
spec = importlib.util.spec_from_file_location("snd_train_script", sys.argv[1])
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)
loaded = []
for argv in json.loads(sys.argv[2]):
    status = run_with_errors(train.main, argv, prog="train.py")
    loaded.append([status, "torch" in sys.modules])
print(json.dumps(loaded))
"""


def test_help_and_argument_errors_answer_without_importing_torch(tmp_path):
    argvs = [["--help"], ["--max_stepz", "3"], ["--learning_rate", "nan"], ["--max-steps", "0", "--output_dir", str(tmp_path / "o")]]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "100"}
    result = subprocess.run(
        [sys.executable, "-c", _NO_TORCH_CHECK, str(REPO_ROOT / "training" / "train.py"), json.dumps(argvs)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == [[0, False], [2, False], [2, False], [2, False]]
    assert result.stderr.splitlines() == [
        "train.py: error: Unknown training config key(s) in the command line: 'max_stepz' (did you mean 'max_steps'?)"
        " (`python training/train.py --help` lists every key) (add --debug for the traceback)",
        "train.py: error: learning_rate must be a finite number, got nan (add --debug for the traceback)",
        "train.py: error: max_steps must be >= 1, got 0 (add --debug for the traceback)",
    ]
    assert not (tmp_path / "o").exists()
