"""Original <-> snd-hf checkpoints: strict key maps on the real ViT-S/B manifests, file loading and its
refusals (truncated files, code-running pickles), wrappers and LoRA merging, `snd convert`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from snd_hf import (
    SND_VARIANTS,
    CheckpointError,
    SnDConfig,
    SnDModel,
    convert_original_state_dict,
    infer_config_from_original,
    load_original_checkpoint,
    original_shapes,
    save_original_checkpoint,
    to_original_state_dict,
)
from snd_hf.cli import main as snd

VARIANTS = {"vits14": ("small", 384, 6), "vitb14": ("base", 768, 12)}


def manifest(fixtures_dir: Path, name: str) -> dict[str, list[int]]:
    return json.loads((fixtures_dir / "dinov2" / f"dinov2_{name}_keys.json").read_text())


def random_state_dict(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_full_size_key_sets_convert_strictly_both_ways(fixtures_dir, name):
    size, hidden, heads = VARIANTS[name]
    shapes = manifest(fixtures_dir, name)
    original = random_state_dict(shapes)
    config = infer_config_from_original(original)
    assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers) == (hidden, heads, 12)
    assert (config.image_size, config.patch_size, config.mlp_ratio) == (518, 14, 4)
    assert config.to_diff_dict() == SnDConfig(**SND_VARIANTS[size]).to_diff_dict()

    converted = convert_original_state_dict(original, config)
    with torch.device("meta"):
        model = SnDModel(config)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    back = to_original_state_dict(converted, config)
    assert list(back) == list(shapes)  # same keys, in the original order
    assert all(back[key] is original[key] for key in original)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"use_swiglu_ffn": True}, {"qkv_bias": False}, {"mlp_ratio": 2.5, "image_size": 224, "patch_size": 16}],
)
def test_original_format_manifest_matches_the_model(overrides, fixtures_dir):
    """`original_shapes` describes the torch.hub file format from a config; it must name every SnDModel
    parameter under its original key, with the model's shape, and equal the real ViT-S manifest."""
    config = SnDConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, **overrides)
    with torch.device("meta"):
        model = SnDModel(config)
    original = {key: torch.empty(shape, device="meta") for key, shape in original_shapes(config).items()}
    converted = convert_original_state_dict(original, config)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    small = original_shapes(SnDConfig.from_variant("small"))
    assert {k: list(v) for k, v in small.items()} == manifest(fixtures_dir, "vits14")


def test_saved_original_checkpoint_matches_the_torch_hub_manifest(tmp_path, fixtures_dir):
    model = SnDModel(SnDConfig.from_variant("small"))
    path = save_original_checkpoint(model, tmp_path / "snd_small.pth")
    saved = torch.load(path, weights_only=True)
    assert {key: list(tensor.shape) for key, tensor in saved.items()} == manifest(fixtures_dir, "vits14")
    reloaded = SnDModel.from_original_checkpoint(path)
    for key, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key
    assert [p.name for p in tmp_path.iterdir()] == ["snd_small.pth"]


def test_key_problems_are_listed_together(fixtures_dir):
    original = random_state_dict(manifest(fixtures_dir, "vits14"))
    config = infer_config_from_original(original)
    del original["blocks.3.ls1.gamma"]
    original["blocks.0.attn.q_bias"] = torch.zeros(384)
    original["blocks.5.mlp.fc2.weight"] = torch.zeros(384, 10)
    with pytest.raises(CheckpointError) as error:
        convert_original_state_dict(original, config)
    message = str(error.value)
    assert "missing (1): encoder.layer.3.layer_scale1.lambda1" in message
    assert "unexpected (1): blocks.0.attn.q_bias" in message
    assert "misshaped (1): encoder.layer.5.mlp.fc2.weight: expected (384, 1536), got (384, 10)" in message


def test_native_state_dict_problems_are_listed(fixtures_dir):
    config = SnDConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28)
    state_dict = SnDModel(config).state_dict()
    state_dict["extra.weight"] = torch.zeros(1)
    del state_dict["layernorm.weight"]
    with pytest.raises(CheckpointError, match=r"missing \(1\): layernorm.weight; unexpected \(1\): extra.weight"):
        to_original_state_dict(state_dict, config)


def test_fixture_checkpoint_needs_explicit_heads(fixtures_dir):
    path = fixtures_dir / "dinov2" / "tiny_a.pth"
    assert SnDModel.from_original_checkpoint(path).config.num_attention_heads == 1  # 64 dims -> one 64-wide head
    assert SnDModel.from_original_checkpoint(path, num_attention_heads=4, blending=True).config.blending is True


def test_truncated_file_is_named(tmp_path, fixtures_dir):
    data = (fixtures_dir / "dinov2" / "tiny_a.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {truncated}"):
        load_original_checkpoint(truncated)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        load_original_checkpoint(broken)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_original_checkpoint(tmp_path / "missing.pth")


class _Payload:
    """Unpickling this would create a file: weights_only must refuse it before anything runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 8), "payload": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=f"refused to load {path}.*nothing was executed"):
        load_original_checkpoint(path)
    assert not marker.exists()


def test_known_wrappers_are_unwrapped(tmp_path, fixtures_dir):
    original = torch.load(fixtures_dir / "dinov2" / "tiny_a.pth", weights_only=True)
    wrapped = {
        "state_dict.pth": {"state_dict": original, "epoch": 3},
        "ddp.pth": {"model": {f"module.{key}": value for key, value in original.items()}},
        "teacher.pth": {"teacher": {f"backbone.{key}": value for key, value in original.items()}, "step": 10},
    }
    for name, checkpoint in wrapped.items():
        torch.save(checkpoint, tmp_path / name)
        loaded = load_original_checkpoint(tmp_path / name)
        assert loaded.keys() == original.keys(), name
        assert all(torch.equal(loaded[key], original[key]) for key in original)
    torch.save({**original, "note": "not a tensor"}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match=r"mixed.pth: state dict entries that are not tensors: \['note'\]"):
        load_original_checkpoint(tmp_path / "mixed.pth")
    torch.save({"weights": original}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"odd.pth: unrecognised checkpoint layout.*\['weights'\]"):
        load_original_checkpoint(tmp_path / "odd.pth")


class _OriginalNames(nn.Module):
    """The two module kinds SnD adapts with LoRA, under their torch.hub names: `patch_embed.proj` (Conv2d)
    and `blocks.0.attn.qkv` / `blocks.0.attn.proj` (Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, 16, 14, 14)
        self.blocks = nn.ModuleList([nn.Module()])
        self.blocks[0].attn = nn.Module()
        self.blocks[0].attn.qkv = nn.Linear(16, 48)
        self.blocks[0].attn.proj = nn.Linear(16, 16)


def test_unmerged_peft_lora_merges_exactly_like_peft(tmp_path):
    torch.manual_seed(0)
    peft_model = get_peft_model(_OriginalNames(), LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "proj"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    path = tmp_path / "peft.pth"
    torch.save(peft_model.state_dict(), path)
    assert any(key.startswith("base_model.model.") and ".lora_A." in key for key in peft_model.state_dict())

    with pytest.raises(CheckpointError, match="peft.pth.*unmerged LoRA.*lora_alpha="):
        load_original_checkpoint(path)
    merged = load_original_checkpoint(path, lora_alpha=8)
    expected = peft_model.merge_and_unload().state_dict()
    assert merged.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(merged[key], tensor, rtol=1e-6, atol=1e-6, msg=key)


def test_convert_command_round_trip(tmp_path, fixtures_dir):
    source = fixtures_dir / "dinov2" / "tiny_b.pth"
    native = tmp_path / "native"
    assert snd(["convert", str(source), str(native), "--num-attention-heads", "6", "--size", "small", "--blending", "false"]) == 0
    assert sorted(p.name for p in native.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    config = json.loads((native / "config.json").read_text())
    assert (config["model_type"], config["num_attention_heads"], config["size"], config["blending"]) == ("snd", 6, "small", False)

    back = tmp_path / "back.pth"
    assert snd(["convert", str(native), str(back)]) == 0
    original, round_trip = torch.load(source, weights_only=True), torch.load(back, weights_only=True)
    assert list(round_trip) == list(original)
    assert all(torch.equal(round_trip[key], original[key]) for key in original)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.pth", "native"]  # no temporary leftovers

    with pytest.raises(FileExistsError, match="--overwrite"):
        snd(["convert", str(native), str(back)])
    assert snd(["convert", str(native), str(back), "--overwrite"]) == 0


def test_failed_convert_leaves_nothing(tmp_path, fixtures_dir):
    original = torch.load(fixtures_dir / "dinov2" / "tiny_a.pth", weights_only=True)
    original["norm.weight"] = torch.ones(3)
    bad = tmp_path / "bad.pth"
    torch.save(original, bad)
    with pytest.raises(CheckpointError, match=r"misshaped \(1\): layernorm.weight"):
        snd(["convert", str(bad), str(tmp_path / "out"), "--num-attention-heads", "4"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth"]


def test_swiglu_architecture_round_trips():
    config = SnDConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, image_size=28, use_swiglu_ffn=True)
    original = to_original_state_dict(SnDModel(config).state_dict(), config)
    assert tuple(original["blocks.1.mlp.w12.weight"].shape) == (2 * 128, 48)  # (int(192 * 2 / 3) + 7) // 8 * 8
    inferred = infer_config_from_original(original, num_attention_heads=3)
    assert inferred.use_swiglu_ffn and inferred.to_diff_dict() == config.to_diff_dict()
    assert convert_original_state_dict(original, inferred).keys() == SnDModel(config).state_dict().keys()
