"""training/pretrain_2d.py: its --out (an earlier output is replaced, a folder holding a user's files never) and its weights (the packaged ones, byte for byte)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "training" / "pretrain_2d.py"


def _script():
    spec = importlib.util.spec_from_file_location("pretrain_2d", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_folder_holding_user_files_beside_an_earlier_output_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    script = _script()
    out = tmp_path / "pretrained"
    shutil.copytree(script.ASSET, out)  # an earlier output of the script (written before run manifests)
    (out / "notes.txt").write_text("my notes")
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    monkeypatch.setattr(script, "pretrain", lambda args: pytest.fail("trained before checking --out"))
    with pytest.raises(SystemExit) as exited:
        script.main(["--out", str(out)])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "holds files no snd run wrote there (" in error and "notes.txt" in error and "--overwrite" in error
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before

    # Without the user's file it is the script's own output: replaced whole, with a manifest.
    (out / "notes.txt").unlink()
    model = script.SnDModel.from_pretrained(script.ASSET)
    monkeypatch.setattr(script, "pretrain", lambda args: model)
    assert script.main(["--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json", "snd_run.json"]
    assert json.loads((out / "config.json").read_text())["training_info"]["role"] == "pretrained_2d"
    # its processor feeds the crop size it learnt at, as the packaged asset's does
    assert json.loads((out / "preprocessor_config.json").read_text()) == json.loads((_script().ASSET / "preprocessor_config.json").read_text())
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"shortest_edge": 84}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pretrained"]  # no staging left


@pytest.mark.slow
def test_the_script_rewrites_the_packaged_weights_byte_for_byte(tmp_path):
    # Its defaults (seed, steps, one thread) are the packaged asset's, whatever OMP_NUM_THREADS says.
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    out = tmp_path / "pretrained_2d"
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], env=env, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model.safetensors").read_bytes() == (_script().ASSET / "model.safetensors").read_bytes()
