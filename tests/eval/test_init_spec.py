"""`snd eval --model NAME=init:RUN_DIR`: the weights a training run started from."""

from __future__ import annotations

import pytest
import torch

from snd_hf.eval.features import load_feature_model, parse_model_spec
from snd_hf.training import TrainingConfig
from snd_hf import SnDModel
from snd_hf.initial_weights import PRETRAINED_2D, initial_run_backbone
from snd_hf.schema import SchemaError
from snd_hf.training.builders import build_backbone
from snd_hf.training.export import save_native

TINY = dict(init="random", finetune="lora", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, seed=3)


def _finished_run(run_dir, **overrides):
    """A run folder as train.py leaves it: config.yaml and the final student with trained LoRA merged.

    Returns the LoRA-wrapped student the run trained (its frozen base weights are the start).
    """
    config = TrainingConfig(output_dir=str(run_dir), **{**TINY, **overrides})
    student = build_backbone(config)  # what train.py builds, after seeding with config.seed
    with torch.no_grad():  # "training": every adapter moves away from its zero start
        for name, parameter in student.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    save_native(student, run_dir, training_info={"role": "student", "step": 1})
    (run_dir / "config.yaml").write_text(config.to_yaml())
    return student


def test_init_rebuilds_the_start_of_a_run(tmp_path):
    student = _finished_run(tmp_path / "run")
    torch.manual_seed(1234)  # whatever the caller's random state, the start depends on the run alone
    torch.rand(7)
    feature_model = load_feature_model(f"init=init:{tmp_path / 'run'}")
    assert feature_model.name == "init"
    start = feature_model.model.state_dict()
    # The base weights under the adapters are the start, exactly.
    base = {key.replace("base_model.model.", "").replace(".base_layer", ""): value for key, value in student.state_dict().items() if "lora_" not in key}
    assert start.keys() == base.keys()
    for key in start:
        torch.testing.assert_close(start[key], base[key], rtol=0, atol=0, msg=key)
    # ...and not the trained weights: the adapted projections differ from the final student's.
    trained = load_feature_model(str(tmp_path / "run")).model.state_dict()
    qkv = "encoder.layer.0.attention.qkv.weight"
    assert not torch.equal(trained[qkv], start[qkv])
    torch.testing.assert_close(trained["layernorm.weight"], start["layernorm.weight"], rtol=0, atol=0)


def test_init_of_the_default_recipe_is_the_packaged_2d_pretrained_model(tmp_path):
    config = TrainingConfig(output_dir=str(tmp_path / "run"))  # init: pretrained_2d, full fine-tuning
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(config.to_yaml())
    start = initial_run_backbone(tmp_path / "run").state_dict()
    packaged = SnDModel.from_pretrained(PRETRAINED_2D).state_dict()
    assert start.keys() == packaged.keys()
    for key in start:
        torch.testing.assert_close(start[key], packaged[key], rtol=0, atol=0, msg=key)


def test_init_refuses_a_run_that_did_not_start_there(tmp_path):
    _finished_run(tmp_path / "run")
    # Another seed in config.yaml: the rebuilt start no longer matches the run's frozen weights.
    config = TrainingConfig(output_dir=str(tmp_path / "run"), **{**TINY, "seed": 4})
    (tmp_path / "run" / "config.yaml").write_text(config.to_yaml())
    with pytest.raises(ValueError, match="differ from the run's frozen weights"):
        initial_run_backbone(tmp_path / "run")


def test_init_needs_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        initial_run_backbone(tmp_path)
    config = TrainingConfig(output_dir=str(tmp_path), **{**TINY, "init": "original", "model_path": str(tmp_path / "gone.pth")})
    (tmp_path / "config.yaml").write_text(config.to_yaml())
    with pytest.raises(FileNotFoundError, match="gone.pth"):
        initial_run_backbone(tmp_path)


def test_init_names_a_wrong_start_key_of_the_run_config(tmp_path):
    config = TrainingConfig(output_dir=str(tmp_path), **TINY)
    (tmp_path / "config.yaml").write_text(config.to_yaml().replace("finetune: lora", "finetune: partial"))
    with pytest.raises(SchemaError, match=r"config.yaml: finetune must be 'lora' or 'full' \(got 'partial'\)"):
        initial_run_backbone(tmp_path)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("init:outputs/run", ("run-init", "init:outputs/run")),
        ("start=init:outputs/run/", ("start", "init:outputs/run/")),
        ("outputs/run", ("run", "outputs/run")),
    ],
)
def test_model_spec_names(spec, expected):
    assert parse_model_spec(spec) == expected
