"""A hand-edited or hostile ``field.json`` is one line naming the file and the key (snd_hf/schema.py)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from snd_hf.cli import console_main
from snd_hf.fields.field import CONFIG_NAME, WEIGHTS_NAME, FeatureField
from snd_hf.fields.segment import Selection, scale_specular, set_roughness
from snd_hf.files import sha256_file
from snd_hf.schema import SchemaError

from .conftest import HELD_OUT

NAN = float("nan")


def _edit(path, **changes) -> None:
    config = json.loads((path / CONFIG_NAME).read_text())
    for dotted, value in changes.items():
        keys = dotted.split("__")
        target = config
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    (path / CONFIG_NAME).write_text(json.dumps(config))


def _renders_identically(field: FeatureField, path, scene) -> None:
    """The field saved at ``path`` loads and renders exactly as ``field`` on the held-out views."""
    cameras = scene.cameras[HELD_OUT]
    with torch.no_grad():
        before, after = field.render(cameras), FeatureField.load(path).render(cameras)
    for name in ("diffuse", "specular", "features_ind", "features_dep", "alpha"):
        assert torch.equal(getattr(before, name), getattr(after, name)), name


def _refused(path, key: str) -> str:
    with pytest.raises(SchemaError) as error:
        FeatureField.load(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path / CONFIG_NAME}: {key}"), message
    return message


@pytest.mark.parametrize(
    "changes, key, says",
    [
        ({"image_size": "swap"}, "image_size", "the tensors were saved with [32, 48]"),
        ({"disentangled": False}, "disentangled", "the tensors were saved with True"),
        ({"disentangled": "false"}, "disentangled", "must be a valid boolean (got 'false')"),
        ({"feature_space__scale": NAN}, "feature_space.scale", "must be a finite number (got nan)"),
        ({"feature_space__scale": 0}, "feature_space.scale", "must be greater than 0 (got 0)"),
        ({"feature_space__scale": -1.0}, "feature_space.scale", "must be greater than 0 (got -1.0)"),
        ({"view_names": ["a"]}, "view_names", "the tensors were saved with"),
        ({"image_size": [200000, 200000]}, "image_size[0]", "must be less than or equal to 8192 (got 200000)"),
        ({"num_gaussians": True}, "num_gaussians", "must be a valid integer (got True)"),
        ({"surprise": 1}, "surprise", "is not a known key"),
    ],
)
def test_edited_field_json_is_refused_naming_the_key(instance_field, glossy_scene, tmp_path, changes, key, says):
    path = instance_field.save(tmp_path / "field")
    good = (path / CONFIG_NAME).read_text()
    if changes.get("image_size") == "swap":
        changes = {"image_size": list(reversed(json.loads(good)["image_size"]))}
    _edit(path, **changes)
    assert says in _refused(path, key)
    (path / CONFIG_NAME).write_text(good)
    _renders_identically(instance_field, path, glossy_scene)


def test_fields_saved_without_the_structure_copy_are_cross_checked_against_their_tensors(instance_field, tmp_path):
    # A field written before field.safetensors kept a copy of the structure: the tensors still tell
    # the number of cameras and whether f_dep exists.
    path = instance_field.save(tmp_path / "field")
    weights = path / WEIGHTS_NAME
    save_file(load_file(weights), weights)  # no metadata
    _edit(path, weights_sha256=sha256_file(weights))
    assert FeatureField.load(path).num_gaussians == instance_field.num_gaussians
    _edit(path, view_names=["a"] * 8)  # 9 training cameras
    assert "view_names holds 8 names for 9 cameras" in _refused(path, "view_names")
    _edit(path, view_names=instance_field.view_names, disentangled=False)
    assert "disentangled is false but the tensors hold a view-dependent f_dep" in _refused(path, "disentangled")


def test_deep_or_huge_field_json_is_one_line(instance_field, tmp_path):
    path = instance_field.save(tmp_path / "field")
    config = (path / CONFIG_NAME).read_text()
    placeholder = json.dumps({**json.loads(config), "info": "deep"})
    (path / CONFIG_NAME).write_text(placeholder.replace('"deep"', '{"x": ' + "[" * 200_000 + "]" * 200_000 + "}"))
    assert "nested deeper than 32 levels" in _refused(path, "nested")
    (path / CONFIG_NAME).write_text(config[:-1] + " " * (17 * 2**20) + "}")
    assert "more than the 16777216 a configuration file may hold" in _refused(path, "")


# ---------------------------------------------------------------- numeric options (issue 21, item 3)
@pytest.mark.parametrize(
    "option, value, says",
    [
        ("--specular-scale", "nan", "must be a finite number, got nan"),
        ("--specular-scale", "1e39", "must be within [0, 1000.0], got 1e+39"),
        ("--roughness", "nan", "must be a finite number, got nan"),
        ("--roughness", "inf", "must be a finite number, got inf"),
        ("--roughness", "-1", "must be within [0, 1000.0], got -1.0"),
        ("--threshold", "2", "must be within [-1, 1], got 2.0"),
    ],
)
def test_non_finite_or_out_of_range_edits_are_refused_before_anything_is_written(
    instance_field, glossy_scene, tmp_path, capsys, option, value, says
):
    path = instance_field.save(tmp_path / "field")
    files = {name: (path / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)}
    argv = ["field", "edit", str(path), "--select", "1:16,16", option, value, "--save-field", str(path)]
    argv += ["--out", str(tmp_path / "panels")]
    if option != "--specular-scale":
        argv += ["--remove-reflections"]
    with pytest.raises(SystemExit) as exit_status:  # argparse's usage error, before anything is read
        console_main(argv)
    assert exit_status.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"snd field edit: error: argument {option}: {says}"
    assert {name: (path / name).read_bytes() for name in files} == files and not (tmp_path / "panels").exists()
    _renders_identically(instance_field, path, glossy_scene)


def test_edit_functions_and_save_refuse_non_finite_values(instance_field, tmp_path):
    path = instance_field.save(tmp_path / "field")
    files = {name: (path / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)}
    count = instance_field.num_gaussians
    selection = Selection(torch.ones(count, dtype=torch.bool), torch.ones(count), 0.5, torch.zeros(instance_field.feature_dim))
    with pytest.raises(SchemaError, match="specular scale must be within"):
        scale_specular(instance_field, selection, 1e39)
    with pytest.raises(SchemaError, match="roughness must be a finite number, got nan"):
        set_roughness(instance_field, selection, NAN)
    broken = copy.deepcopy(instance_field)
    with torch.no_grad():
        broken.specular[0, 0, 0] = NAN
    with pytest.raises(ValueError, match=r"non-finite values in \['specular'\]; nothing was written"):
        broken.save(path)
    assert {name: (path / name).read_bytes() for name in files} == files
