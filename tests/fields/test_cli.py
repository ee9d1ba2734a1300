"""`snd field fit | segment | edit` end to end on a tiny generated glossy scene."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import snd_hf
from snd_hf.cli import main as snd_main
from snd_hf.data.synthetic import generate_scenes
from snd_hf.fields.field import CONFIG_NAME, WEIGHTS_NAME, FeatureField
from snd_hf.fields.pictures import MARK_COLOR

MODEL = str(Path(snd_hf.__file__).parent / "assets" / "default")  # the embedded checkpoint
FIT = ["--appearance-steps", "4", "--feature-steps", "4", "--init-stride", "2", "--init-views", "2", "--hold-out", "4",
       "--feature-dim", "4", "--device", "cpu"]  # fmt: skip


def _error(argv: list[str], capsys) -> str:
    """The one-line error of a failing command, raised or printed (however `snd` reports it)."""
    try:
        code = snd_main(argv)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        return str(error)
    assert code != 0
    return capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    root = generate_scenes(tmp_path_factory.mktemp("cli") / "data", 1, 8, 24, 32, seed=1, progress=False, glossy=True)
    return root / "scenes" / "synth_0000"


@pytest.fixture(scope="module")
def field_dir(scene_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fields") / "room.field"
    assert snd_main(["field", "fit", str(scene_dir), "--model", MODEL, "--out", str(out), *FIT]) == 0
    return out


def test_fit_writes_a_field_and_labelled_pictures(field_dir):
    field = FeatureField.load(field_dir)
    assert len(field.view_names) == 6 and field.info["held_out_views"] == [2, 6]
    assert field.feature_dim == 4 and field.disentangled
    pictures = sorted((field_dir / "pictures").glob("*.png"))
    assert len(pictures) == 5  # 3 training views and 2 held-out frames: image | render | diffuse | specular | f_ind | |f_dep|
    with Image.open(pictures[0]) as picture:
        assert picture.height > 3 * 24 and picture.width > 6 * 3 * 32  # pictures at 3x, with a title and captions


def test_segment_and_edit_write_panels(field_dir, tmp_path):
    assert snd_main(["field", "segment", str(field_dir), "--view", "1", "--click", "16,16", "--out", str(tmp_path / "seg")]) == 0
    assert len(list((tmp_path / "seg").glob("*.png"))) == 6
    with Image.open(sorted((tmp_path / "seg").glob("001_*.png"))[0]) as panel:
        pixels = np.asarray(panel.convert("RGB"))
    assert (pixels == MARK_COLOR).all(-1).sum() >= 2 * 13 * 9  # the cross (13 pixels, 9 each at 3x) in two pictures
    assert snd_main(["field", "segment", str(field_dir), "--all", "--out", str(tmp_path / "all")]) == 0
    assert len(list((tmp_path / "all").glob("*.png"))) == 6
    edited = tmp_path / "edited.field"
    argv = ["field", "edit", str(field_dir), "--select", "1:16,16", "--remove-reflections", "--recolor", "0.2,0.5,0.9",
            "--out", str(tmp_path / "edit"), "--save-field", str(edited)]  # fmt: skip
    assert snd_main(argv) == 0
    assert len(list((tmp_path / "edit").glob("*.png"))) == 6
    assert FeatureField.load(edited).num_gaussians == FeatureField.load(field_dir).num_gaussians


def test_bad_inputs_are_one_line_errors_and_write_nothing(scene_dir, field_dir, tmp_path, capsys):
    no_depth = tmp_path / "no_depth"
    shutil.copytree(scene_dir, no_depth)
    shutil.rmtree(no_depth / "depth")
    out = tmp_path / "never"
    message = _error(["field", "fit", str(no_depth), "--model", MODEL, "--out", str(out), *FIT], capsys)
    assert "no depth maps" in message and "\n" not in message
    assert not out.exists()

    message = _error(["field", "segment", str(field_dir), "--view", "0", "--click", "99,3", "--out", str(out)], capsys)
    assert "outside the 32x24 image" in message and not out.exists()

    damaged = tmp_path / "damaged.field"
    shutil.copytree(field_dir, damaged)
    (damaged / WEIGHTS_NAME).write_bytes((damaged / WEIGHTS_NAME).read_bytes()[:100])
    message = _error(["field", "segment", str(damaged), "--view", "0", "--click", "3,3", "--out", str(out)], capsys)
    assert "truncated or modified" in message and not out.exists()
    assert (field_dir / CONFIG_NAME).is_file()

    message = _error(["field", "edit", str(field_dir), "--select", "0:3,3", "--out", str(out)], capsys)
    assert "nothing to edit" in message
    message = _error(["field", "segment", str(field_dir), "--view", "0", "--out", str(out)], capsys)
    assert "either --click X,Y" in message and not out.exists()


def test_segment_runs_of_two_fields_never_mix_in_one_out(field_dir, tmp_path, capsys):
    other = tmp_path / "other.field"
    assert snd_main(["field", "edit", str(field_dir), "--select", "1:16,16", "--recolor", "0.9,0.1,0.1",
                     "--out", str(tmp_path / "edit"), "--save-field", str(other)]) == 0  # fmt: skip
    out = tmp_path / "seg"
    segment = ["--view", "1", "--click", "16,16", "--out", str(out)]
    assert snd_main(["field", "segment", str(field_dir), *segment]) == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    message = _error(["field", "segment", str(other), *segment], capsys)
    assert "holds the results of another run" in message and "differs in field_sha256" in message and "--overwrite" in message
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert snd_main(["field", "segment", str(other), *segment, "--overwrite"]) == 0
    manifest = json.loads((out / "snd_run.json").read_text())
    assert manifest["info"]["field"] == str(other) and len(manifest["outputs"]) == 6
    assert sorted(path.name for path in out.glob("*.png")) == sorted(manifest["outputs"])  # the other field's only
    assert all((out / name).read_bytes() != before[name] for name in manifest["outputs"])  # all redrawn (red selection differs)
