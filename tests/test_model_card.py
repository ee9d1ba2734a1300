"""Model cards: the published variants' card and build_model_card for trained checkpoints."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT
from huggingface_hub import HfApi, ModelCard

import snd_hf
from snd_hf import SnDConfig
from snd_hf.hub import VARIANT_FILES
from snd_hf.model_card import build_model_card, model_card_of

SYNTHETIC_RUN = {  # the shape of TrainingConfig.to_dict() for the tiny synthetic run
    "dataset": "synthetic",
    "dataset_path": None,
    "synthetic_scenes": 4,
    "synthetic_frames": 12,
    "image_size": [56, 84],
    "init": "random",
    "model_path": None,
    "finetune": "lora",
    "lora_r": 8,
    "lora_alpha": 8.0,
    "lora_dropout": 0.1,
    "lora_targets": ["qkv", "proj", "projection"],
    "lifter": "depth",
    "blending": 0.5,
    "mask_aware": True,
    "ema_momentum": 0.99,
    "ema_every": 1,
    "learning_rate": 0.001,
    "max_steps": 120,
}


def split_card(text: str) -> tuple[dict, str]:
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, flags=re.S)
    assert match, "card must start with YAML front matter between --- lines"
    return yaml.safe_load(match.group(1)), match.group(2)


def test_published_card_metadata_and_loading_calls():
    metadata, body = split_card((REPO_ROOT / "model_cards" / "README.md").read_text())
    assert metadata["library_name"] == "snd-hf"
    assert metadata["pipeline_tag"] == "image-feature-extraction"
    assert metadata["license"] == "mit"
    assert metadata["base_model"] == ["facebook/dinov2-small", "facebook/dinov2-base"]
    assert metadata["datasets"] == ["scannetpp"]
    assert {"snd", "dinov2", "3d-aware"} <= set(metadata["tags"])
    # Every variant's loading call names the file snd-hf actually downloads for it.
    for (size, blending), filename in VARIANT_FILES.items():
        call = f'SnDModel.from_pretrained("david-shavin/SnD", size="{size}", blending={blending})'
        line = next(line for line in body.splitlines() if call in line)
        assert line.endswith(f"# {filename}")
        assert f"| `{filename}` |" in body
    assert "ICLR" in body and "Shavin, David and Benaim, Sagie" in body
    assert "ScanNet++" in body.split("## Limitations")[1]


def test_build_model_card_synthetic_run():
    config = SnDConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, blending=True)
    eval_results = {"depth": {"rmse": 0.41234, "delta1": 0.8}, "segmentation": {"miou": 31.5}}
    text = build_model_card(config, training_config=SYNTHETIC_RUN, steps=120, eval_results=eval_results, repo_id="me/snd-tiny")
    metadata, body = split_card(text)
    assert metadata["library_name"] == "snd-hf" and metadata["pipeline_tag"] == "image-feature-extraction"
    assert metadata["license"] == "mit"
    assert "base_model" not in metadata and "datasets" not in metadata  # random init, synthetic data
    assert "synthetic-data" in metadata["tags"]
    assert body.lstrip().startswith("# snd-tiny\n")
    assert 'SnDModel.from_pretrained("me/snd-tiny")' in body
    assert "2 layers, 48 channels, 3 heads, patch 14" in body
    assert "Steps: 120 optimizer steps" in body
    assert "procedural synthetic indoor scenes (4 scenes x 12 frames), trained at 56x84 pixels" in body
    assert "LoRA rank 8, alpha 8.0" in body and "blending coefficient 0.5" in body
    assert "| depth | rmse | 0.4123 |" in body and "| segmentation | miou | 31.5 |" in body
    dumped = re.search(r"```yaml\n(.*?)```", body, flags=re.S).group(1)
    assert yaml.safe_load(dumped) == SYNTHETIC_RUN


def test_build_model_card_published_recipe_and_errors():
    config = SnDConfig.from_variant("small", blending=False)
    run = {**SYNTHETIC_RUN, "dataset": "scannetpp", "dataset_path": "/data/scannetpp", "init": "original",
           "model_path": "/weights/dinov2_vits14_pretrain.pth", "blending": 1.0}  # fmt: skip
    metadata, body = split_card(build_model_card(config, training_config=run, steps=300001))
    assert metadata["base_model"] == "facebook/dinov2-small"
    assert metadata["datasets"] == ["scannetpp"]
    assert "ViT-S/14" in body and "without blending: for multi-view correspondence" in body
    assert "ScanNet++ scenes from `scannetpp`" in body and "`dinov2_vits14_pretrain.pth`" in body
    assert "Not evaluated yet" in body
    # Nothing known but the config still renders a valid card.
    metadata, body = split_card(build_model_card(SnDConfig()))
    assert metadata["tags"][0] == "snd" and "not recorded" in body
    with pytest.raises(TypeError, match="config"):
        build_model_card({"hidden_size": 384})
    with pytest.raises(ValueError, match="steps"):
        build_model_card(config, steps=-1)
    with pytest.raises(TypeError, match="eval_results"):
        build_model_card(config, eval_results={"depth": 0.3})


def test_card_is_accepted_by_the_hub(hub):
    card = build_model_card(SnDConfig.from_variant("base", blending=True), training_config=SYNTHETIC_RUN, steps=3)
    api = HfApi()
    api.create_repo("me/carded")
    api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id="me/carded")
    loaded = ModelCard.load("me/carded")
    assert loaded.data.library_name == "snd-hf" and loaded.data.pipeline_tag == "image-feature-extraction"


PACKAGED = REPO_ROOT / "snd_hf" / "assets" / "default"  # trained by train.py from init: pretrained_2d


def _assert_card_of_the_packaged_model(card: str, repo_id: str) -> None:
    metadata, body = split_card(card)
    assert metadata["library_name"] == "snd-hf" and "synthetic-data" in metadata["tags"]
    assert "Variant: a custom size (48 channels, 2 layers), trained without blending: for multi-view correspondence." in body
    assert "| initialisation | the packaged 2D-pretrained tiny ViT (`snd_hf/assets/pretrained_2d`" in body
    assert "Steps: 2000 optimizer steps" in body and "(16 scenes x 12 frames), trained at 84x112 pixels" in body
    assert f'SnDModel.from_pretrained("{repo_id}")' in body and "`import snd_hf` is what teaches" in body
    assert "Shavin, David and Benaim, Sagie" in body


def test_save_pretrained_writes_the_card_and_plain_permissions(tmp_path):
    from snd_hf import SnDModel

    model = SnDModel.from_pretrained(PACKAGED)
    model.save_pretrained(tmp_path / "saved")
    _assert_card_of_the_packaged_model((tmp_path / "saved" / "README.md").read_text(), "path/to/this/checkpoint")
    umask = os.umask(0)
    os.umask(umask)
    modes = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "saved").iterdir()}
    assert modes == dict.fromkeys(["README.md", "config.json", "model.safetensors", "preprocessor_config.json"], 0o666 & ~umask)
    # A card the package did not write is kept.
    (tmp_path / "saved" / "README.md").write_text("# my notes\n")
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "README.md").read_text() == "# my notes\n"


def test_push_to_hub_uploads_the_card_not_transformers_generic_one(hub):
    from snd_hf import SnDModel

    SnDModel.from_pretrained(PACKAGED).push_to_hub("me/snd-tiny", tags=["my-tag"])
    card = ModelCard.load("me/snd-tiny")
    assert "my-tag" in card.data.tags and "More Information Needed" not in card.content
    _assert_card_of_the_packaged_model(card.content, "me/snd-tiny")
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(hub.files("me/snd-tiny"))


def test_the_trainer_upload_card_records_its_init(hub, tmp_path):
    import json

    from snd_hf.training.push import push_final_model

    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((PACKAGED / name).read_bytes())
    info = json.loads((PACKAGED / "config.json").read_text())["training_info"]
    HfApi().create_repo("me/trained")
    push_final_model(tmp_path, "me/trained", training_config=info["config"], step=info["step"])
    _assert_card_of_the_packaged_model(ModelCard.load("me/trained").content, "me/trained")


def test_the_2d_pretraining_card_says_what_the_model_is():
    # training/pretrain_2d.py records its arguments and objective (role pretrained_2d), not a trainer's configuration.
    config = SnDConfig.from_pretrained(Path(snd_hf.__file__).parent / "assets" / "pretrained_2d")
    metadata, body = split_card(model_card_of(config))
    assert metadata["library_name"] == "snd-hf" and "synthetic-data" in metadata["tags"]
    assert "pre-trained by `training/pretrain_2d.py`" in body and "dense InfoNCE between two crops of one image" in body
    assert "It is not distilled with SnD." in body and "distilled from 3D-lifted" not in body
    assert "| initialisation | random (standard DINOv2 initialisation) |" in body and "| fine-tuning | all parameters |" in body
    assert "Data: procedural synthetic indoor scenes (24 scenes x 12 frames)" in body and "Steps: 600 optimizer steps" in body
    assert "Teacher: none: two augmented crops of one image" in body and "not recorded" not in body.split("## Evaluation")[0]
    assert "2D-pretrained: no SnD training, so no blending variant." in body
    with pytest.raises(ValueError, match=r"overrides must name fields of the card's template .*got \['sumary'\]"):
        build_model_card(config, overrides={"sumary": "x"})
