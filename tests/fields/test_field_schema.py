"""A hand-edited or hostile ``field.json`` is one line naming the file and the key (snd_hf/schema.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from snd_hf.fields.field import CONFIG_NAME, WEIGHTS_NAME, FeatureField
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
    # The good file still loads and renders identically.
    (path / CONFIG_NAME).write_text(good)
    cameras = glossy_scene.cameras[HELD_OUT]
    with torch.no_grad():
        before, after = instance_field.render(cameras), FeatureField.load(path).render(cameras)
    assert torch.equal(before.features_ind, after.features_ind) and torch.equal(before.specular, after.specular)


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
