"""`snd convert`: both directions, the direction chosen from source and destination, exact round trips
of the head count through the sidecar, refusals (not a checkpoint, non-finite weights), and what a
full disk or an interrupted run leaves behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from snd_hf import SnDConfig, SnDModel
from snd_hf.cli import main as snd
from snd_hf.files import TEMPORARY_TAG
from snd_hf.loading import CheckpointError
from snd_hf.training.export import save_original

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_native(folder: Path, heads: int = 3, seed: int = 0) -> SnDModel:
    torch.manual_seed(seed)
    model = SnDModel(SnDConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=heads, image_size=28)).eval()
    model.save_pretrained(folder)
    return model


def test_convert_command_round_trip(tmp_path, fixtures_dir, capsys):
    source = fixtures_dir / "dinov2" / "tiny_b.pth"
    native = tmp_path / "native"
    assert snd(["convert", str(source), str(native), "--num-heads", "6", "--size", "small", "--blending", "false"]) == 0
    assert sorted(p.name for p in native.iterdir()) == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    config = json.loads((native / "config.json").read_text())
    assert (config["model_type"], config["num_attention_heads"], config["size"], config["blending"]) == ("snd", 6, "small", False)
    assert f"wrote native SnD directory {native} (README.md, config.json, model.safetensors, preprocessor_config.json)" in capsys.readouterr().out
    card = (native / "README.md").read_text()  # the model card names the variant and how to load it
    assert card.startswith("---\nlibrary_name: snd-hf\n") and "base_model: facebook/dinov2-small" in card
    assert "Variant: ViT-S/14 (`size=\"small\"`), trained without blending: for multi-view correspondence." in card
    assert "`import snd_hf` is what teaches" in card and "not recorded (the checkpoint's config.json has no training_info)" in card

    back = tmp_path / "back.pth"
    assert snd(["convert", str(native), str(back)]) == 0
    assert f"wrote original-layout checkpoint {back} (torch.hub DINOv2 keys) and its sidecar back.pth.json" in capsys.readouterr().out
    original, round_trip = torch.load(source, weights_only=True), torch.load(back, weights_only=True)
    assert list(round_trip) == list(original)
    assert all(torch.equal(round_trip[key], original[key]) for key in original)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.pth", "back.pth.json", "native"]  # no leftovers

    with pytest.raises(FileExistsError, match="--overwrite"):
        snd(["convert", str(native), str(back)])
    assert snd(["convert", str(native), str(back), "--overwrite"]) == 0


def test_trainer_exports_round_trip_their_head_count(tmp_path, recwarn):
    """The trainer's `*_original.pth` (3 heads of 16 on a 48-wide ViT) converts back with 3 heads, not
    the 1 that hidden / 64 would guess: the sidecar carries it, and the features are the same."""
    model = tiny_native(tmp_path / "unused")
    exported = save_original(model, tmp_path / "student_original.pth")
    native, back = tmp_path / "native", tmp_path / "back.pth"
    assert snd(["convert", str(exported), str(native)]) == 0
    assert snd(["convert", str(native), str(back)]) == 0
    pixel_values = torch.randn(1, 3, 28, 42)
    expected = model(pixel_values).feature_map
    for loaded in (SnDModel.from_pretrained(native), SnDModel.from_original_checkpoint(back)):
        assert loaded.config.num_attention_heads == 3
        assert torch.equal(loaded(pixel_values).feature_map, expected)
    assert not [w for w in recwarn if "is a guess" in str(w.message)]


def test_guessed_head_count_is_warned_about(tmp_path, fixtures_dir):
    with pytest.warns(UserWarning, match=r"tiny_a.pth: num_attention_heads=1 is a guess .*snd convert --num-heads"):
        snd(["convert", str(fixtures_dir / "dinov2" / "tiny_a.pth"), str(tmp_path / "native")])


def test_direction_comes_from_source_and_destination(tmp_path, fixtures_dir):
    source = fixtures_dir / "dinov2" / "tiny_b.pth"
    plain = tmp_path / "b.pth"  # file -> .pth: a plain original-layout file (unwrapped, merged) + sidecar
    assert snd(["convert", str(source), str(plain), "--num-heads", "6"]) == 0
    assert plain.is_file() and (tmp_path / "b.pth.json").is_file()
    assert SnDModel.from_original_checkpoint(plain).config.num_attention_heads == 6
    native = tmp_path / "native"
    tiny_native(native)
    refusals = {
        (str(native), str(tmp_path / "copy")): "is already a native directory; .* ending in .pth",
        (str(source), str(tmp_path / "x.safetensors")): "original-layout output is written as .pth",
        (str(native), str(tmp_path / "x.pth"), "--num-heads", "3"): r"\['num_attention_heads'\] apply to an original-layout file",
    }
    for arguments, message in refusals.items():
        with pytest.raises(ValueError, match=message):
            snd(["convert", *arguments])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.pth", "b.pth.json", "native"]


def test_failed_convert_leaves_nothing(tmp_path, fixtures_dir):
    original = torch.load(fixtures_dir / "dinov2" / "tiny_a.pth", weights_only=True)
    original["norm.weight"] = torch.ones(3)
    bad = tmp_path / "bad.pth"
    torch.save(original, bad)
    with pytest.raises(CheckpointError, match=r"misshaped \(1\): layernorm.weight"):
        snd(["convert", str(bad), str(tmp_path / "out"), "--num-heads", "4"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth"]


def test_convert_names_what_is_wrong_with_the_source(tmp_path, fixtures_dir):
    text = tmp_path / "notes.pth"
    text.write_text("not weights\n")
    with pytest.raises(CheckpointError, match=f"{text} is not a PyTorch .* or safetensors checkpoint"):
        snd(["convert", str(text), str(tmp_path / "out")])
    original = torch.load(fixtures_dir / "dinov2" / "tiny_a.pth", weights_only=True)
    original["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    torch.save(original, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"nan.pth: blocks.0.attn.qkv.weight holds 1 non-finite") as error:
        snd(["convert", str(tmp_path / "nan.pth"), str(tmp_path / "out"), "--num-heads", "4"])
    assert "does not reproduce" not in str(error.value)  # the source is blamed, not the conversion
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pth", "notes.pth"]


@pytest.mark.slow
def test_full_disk_keeps_the_old_file_and_says_so(tmp_path):
    """`ulimit -f` (RLIMIT_FSIZE) in a subprocess, as the reliability probe did: the write fails half-way,
    the error says why in one sentence, the previous export is byte-identical and nothing is left over."""
    native = tmp_path / "native"
    tiny_native(native)
    previous = tmp_path / "export.pth"
    previous.write_bytes(b"the previous export")
    script = (
        "import resource, sys\n"
        "from snd_hf.cli import main\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))\n"
        "try:\n"
        f"    main(['convert', {str(native)!r}, {str(previous)!r}, '--overwrite'])\n"
        "except OSError as error:\n"
        "    print(error)\n"
        "    sys.exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 3, result.stderr[-2000:]
    assert f"cannot write {previous}: no space left on the device / file too large" in result.stdout
    assert "the file size limit (ulimit -f) is 20000 bytes" in result.stdout and "nothing was replaced" in result.stdout
    assert previous.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.pth", "native"]


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path, fixtures_dir, caplog):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)  # a process that has exited
    host = socket.gethostname()
    stale = tmp_path / f".out{TEMPORARY_TAG}{host}~{dead}~abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    live = tmp_path / f".out{TEMPORARY_TAG}{host}~{os.getpid()}~def456"  # a concurrent writer: kept
    live.mkdir()
    elsewhere = tmp_path / f".out{TEMPORARY_TAG}another-host~{dead}~ghi789"  # cannot tell: kept
    elsewhere.mkdir()
    with caplog.at_level("WARNING", logger="snd_hf.files"):
        assert snd(["convert", str(fixtures_dir / "dinov2" / "tiny_b.pth"), str(tmp_path / "out"), "--num-heads", "6"]) == 0
    assert not stale.exists() and live.exists() and elsewhere.exists()
    assert f"removed {stale}, a temporary left by an interrupted snd-hf run (process {dead})" in caplog.text
