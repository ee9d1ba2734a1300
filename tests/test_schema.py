"""The schema layer (snd_hf/schema.py): every hostile or hand-edited JSON the package reads is one line
naming the file and the key, before anything is allocated; good files load as before (issue 21, item 4).
Feature fields' field.json: tests/fields/test_field_schema.py; training YAML: tests/training/test_resume.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel

from snd_hf import SnDConfig, SnDImageProcessor, SnDModel
from snd_hf.cli import console_main
from snd_hf.loading import CheckpointError
from snd_hf.schema import SchemaError, check_depth, read_json, read_yaml


def _tiny(folder: Path) -> SnDModel:
    torch.manual_seed(0)
    model = SnDModel(SnDConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56)).eval()
    model.save_pretrained(folder)
    return model


def _edit(file: Path, **changes) -> str:
    """Apply ``changes`` to a JSON file; returns its earlier text."""
    text = file.read_text()
    file.write_text(json.dumps({**json.loads(text), **changes}))
    return text


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"num_attention_heads": 0}, "num_attention_heads must be greater than or equal to 1 (got 0)"),
        ({"patch_size": 0}, "patch_size must be greater than or equal to 1 (got 0)"),
        ({"layer_norm_eps": -1}, "layer_norm_eps must be greater than 0 (got -1)"),
        ({"layer_norm_eps": "1e-6"}, "layer_norm_eps must be a valid number (got '1e-6')"),
        ({"hidden_size": 33}, "hidden_size (33) must be divisible by num_attention_heads (2)"),
        ({"image_size": 200_000}, "image_size must be less than or equal to 8192 (got 200000)"),
        ({"hidden_dropout_prob": 2.0}, "hidden_dropout_prob must be less than or equal to 1 (got 2.0)"),
    ],
)
def test_hostile_config_json_is_one_line_naming_file_and_key(tmp_path, capsys, changes, problem):
    folder = tmp_path / "model"
    model = _tiny(folder)
    config = folder / "config.json"
    good = _edit(config, **changes)
    for load in (SnDConfig.from_pretrained, AutoConfig.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(SchemaError) as error:
            load(folder)
        assert str(error.value) == f"{config}: {problem}"
    with pytest.raises(CheckpointError) as error:
        SnDModel.from_pretrained(folder)
    assert str(error.value) == f"{config}: {problem}: the checkpoint's config is corrupt"
    picture = tmp_path / "room.png"
    Image.new("RGB", (28, 28)).save(picture)
    capsys.readouterr()  # saving's progress bars
    assert console_main(["extract", str(picture), "--model", str(folder), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"snd: error: {config}: {problem}: the checkpoint's config is corrupt (add --debug for the traceback)"]
    assert not (tmp_path / "out").exists()
    # The good file loads the same model.
    config.write_text(good)
    loaded = SnDModel.from_pretrained(folder)
    assert {**loaded.config.to_dict(), "_name_or_path": ""} == model.config.to_dict()
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in loaded.state_dict().items())


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"image_std": [0, 0, 0]}, "image_std[0] must be greater than 0 (got 0)"),
        ({"size": {"shortest_edge": 1e6}}, "size.shortest_edge must be a valid integer (got 1000000.0)"),
        ({"size": {"shortest_edge": 1_000_000}}, "size.shortest_edge must be less than or equal to 8192 (got 1000000)"),
        ({"image_mean": [float("nan"), 0.5, 0.5]}, "image_mean[0] must be a finite number (got nan)"),
        ({"do_normalize": "false"}, "do_normalize must be a valid boolean (got 'false')"),
        ({"snap": "crop"}, "snap must be 'resize', 'pad' or 'none' (got 'crop')"),
    ],
)
def test_hostile_preprocessor_config_is_one_line_naming_file_and_key(tmp_path, changes, problem):
    processor = SnDImageProcessor()
    processor.save_pretrained(tmp_path)
    file = tmp_path / "preprocessor_config.json"
    good = _edit(file, **changes)
    with pytest.raises(SchemaError) as error:
        SnDImageProcessor.from_pretrained(tmp_path)
    assert str(error.value).startswith(f"{file}: {problem}") and "\n" not in str(error.value)
    file.write_text(good)
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    expected = processor(image, return_tensors="pt").pixel_values
    assert torch.equal(SnDImageProcessor.from_pretrained(tmp_path)(image, return_tensors="pt").pixel_values, expected)
    with pytest.raises(SchemaError, match=r"^SnDImageProcessor: image_std\[1\] must be greater than 0 \(got 0\.0\)$"):
        SnDImageProcessor(image_std=[0.2, 0.0, 0.2])


def test_deep_huge_or_tagged_files_are_one_line(tmp_path):
    deep = tmp_path / "config.json"
    deep.write_text('{"info": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(SchemaError, match=f"^{deep}: nested deeper than 32 levels$"):
        read_json(deep)
    with pytest.raises(SchemaError, match=f"^{deep}: nested deeper than 32 levels$"):
        SnDConfig.from_pretrained(tmp_path)
    shallow = {"a": [[{"b": 1}]]}
    check_depth(shallow, "x")  # 4 levels
    with pytest.raises(SchemaError, match="^x: nested deeper than 3 levels$"):
        check_depth(shallow, "x", limit=3)
    deep.write_text('{"a": "' + "x" * (17 * 2**20) + '"}')
    with pytest.raises(SchemaError, match=f"^{deep}: 17825801 bytes, more than the 16777216 a configuration file may hold$"):
        read_json(deep)
    tagged = tmp_path / "run.yaml"
    marker = tmp_path / "ran"
    tagged.write_text(f"seed: 0\nx: !!python/object/apply:os.mkdir [{str(marker)!r}]\n")
    with pytest.raises(SchemaError, match=f"^{tagged}: could not determine a constructor for the tag .*python/object/apply:os.mkdir.* \\(line 2\\)"):
        read_yaml(tagged)
    assert not marker.exists()


def test_a_hand_edited_results_json_is_never_read_to_delete_or_refuse(tmp_path, capsys):
    # The run folder's manifest, not results.json, says what an evaluation wrote: a hostile `pictures`
    # (a string naming the user's files r, e, s) deletes nothing, with or without --overwrite.
    model = tmp_path / "model"
    _tiny(model)
    out = tmp_path / "out"
    out.mkdir()
    user_files = {"r": "mine", "e": "mine too", "s": "and mine", "notes.txt": "notes"}
    for name, text in user_files.items():
        (out / name).write_text(text)
    (out / "results.json").write_text(json.dumps({"data": "synthetic", "results": {}, "pictures": "results"}))
    capsys.readouterr()  # saving's progress bars
    argv = ["eval", "depth", "--model", f"a={model}", "--data", "synthetic", "--out", str(out), "--synthetic-size", "8x2x42x56",
            "--steps", "2"]  # fmt: skip
    assert console_main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"snd: error: {out} is not empty (") and "no snd run wrote it" in line and "--overwrite" in line
    assert sorted(p.name for p in out.iterdir()) == sorted([*user_files, "results.json"])  # nothing generated either
    assert console_main([*argv, "--overwrite"]) == 0
    assert all((out / name).read_text() == text for name, text in user_files.items())
    assert isinstance(json.loads((out / "results.json").read_text())["pictures"], list)  # this run's own results
