"""Original <-> snd-hf checkpoints: strict key maps on the real ViT-S/B manifests, file loading and its
refusals (truncated, bit-flipped or non-finite files, code-running pickles, files that are not
checkpoints), DINOv2 training layouts, the head-count sidecar and peft LoRA merging checked against
peft's own `merge_and_unload()`. `snd convert` is in tests/test_convert.py."""

from __future__ import annotations

import copy
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from torch import nn

from snd_hf import SnDConfig, SnDModel
from snd_hf.configuration_snd import SND_VARIANTS
from snd_hf.loading import (
    SHAPE_FIELDS,
    CheckpointError,
    convert_original_state_dict,
    infer_config_from_original,
    load_original_checkpoint,
    original_shapes,
    read_checkpoint_file,
    save_original_checkpoint,
    sidecar_path,
    to_original_state_dict,
)

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
    inferred = infer_config_from_original(original, num_attention_heads=4)  # SHAPE_FIELDS are all the shapes need
    shape_fields = {name: getattr(config, name) for name in SHAPE_FIELDS}
    assert original_shapes(inferred) == original_shapes(SnDConfig(**shape_fields, num_attention_heads=1))


def test_saved_original_checkpoint_matches_the_torch_hub_manifest(tmp_path, fixtures_dir):
    model = SnDModel(SnDConfig.from_variant("small"))
    path = save_original_checkpoint(model, tmp_path / "snd_small.pth")
    saved = torch.load(path, weights_only=True)
    assert {key: list(tensor.shape) for key, tensor in saved.items()} == manifest(fixtures_dir, "vits14")
    reloaded = SnDModel.from_original_checkpoint(path)
    for key, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snd_small.pth", "snd_small.pth.json"]  # + its sidecar


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


def test_fixture_checkpoint_needs_explicit_heads(fixtures_dir, recwarn):
    path = fixtures_dir / "dinov2" / "tiny_a.pth"
    with pytest.warns(UserWarning, match=r"tiny_a.pth: num_attention_heads=1 is a guess \(hidden size 64 / 64\)"):
        assert SnDModel.from_original_checkpoint(path).config.num_attention_heads == 1  # one 64-wide head
    recwarn.clear()
    assert SnDModel.from_original_checkpoint(path, num_attention_heads=4, blending=True).config.blending is True
    assert not [w for w in recwarn if "is a guess" in str(w.message)]  # an explicit count is not a guess


def test_published_widths_are_not_warned_about(fixtures_dir, recwarn):
    for name, (_, hidden, heads) in VARIANTS.items():
        state_dict = {key: torch.empty(shape, device="meta") for key, shape in manifest(fixtures_dir, name).items()}
        assert infer_config_from_original(state_dict).num_attention_heads == heads == hidden // 64
    assert not [w for w in recwarn if "is a guess" in str(w.message)]


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


def test_swiglu_architecture_round_trips():
    config = SnDConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, image_size=28, use_swiglu_ffn=True)
    original = to_original_state_dict(SnDModel(config).state_dict(), config)
    assert tuple(original["blocks.1.mlp.w12.weight"].shape) == (2 * 128, 48)  # (int(192 * 2 / 3) + 7) // 8 * 8
    inferred = infer_config_from_original(original, num_attention_heads=3)
    assert inferred.use_swiglu_ffn and inferred.to_diff_dict() == config.to_diff_dict()
    assert convert_original_state_dict(original, inferred).keys() == SnDModel(config).state_dict().keys()


# ----------------------------------------------------------------------------- files that are not what they claim
def test_files_that_are_not_checkpoints_are_named(tmp_path):
    contents = {
        "picture.pth": b"\x89PNG\r\n\x1a\n" + bytes(100),
        "notes.pth": b"hello, this is text",
        "empty.pth": b"",
        "config.safetensors": b'{"hidden_size": 384}',
    }
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=f"{name} is not a PyTorch .* or safetensors checkpoint"):
            load_original_checkpoint(tmp_path / name)
    legacy = tmp_path / "legacy.pth"  # the pre-zip torch.save format is still a checkpoint
    torch.save({"a": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint_file(legacy)["a"], torch.ones(2))


def test_bit_flips_inside_a_tensor_fail_the_archive_crc(tmp_path, fixtures_dir):
    original = {key: value.clone() for key, value in torch.load(fixtures_dir / "dinov2" / "tiny_a.pth", weights_only=True).items()}
    path = tmp_path / "flipped.pth"
    torch.save(original, path)
    data = bytearray(path.read_bytes())
    offset = data.find(original["blocks.0.attn.qkv.weight"].numpy().tobytes())
    assert offset > 0
    for index in range(48):  # 48 bytes inside one tensor entry, as in the bit-rot probe
        data[offset + 64 + index] ^= 0x5A
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # torch itself reads it without a complaint
    with pytest.raises(
        CheckpointError,
        match=r"^\S*flipped.pth is corrupt: archive entry '[^']*/data/\d+' \(holding blocks\.0\.attn\.qkv\.weight\) fails its CRC-32",
    ):
        load_original_checkpoint(path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_non_finite_weights_are_refused_by_name(tmp_path, fixtures_dir, suffix):
    original = {key: value.clone() for key, value in torch.load(fixtures_dir / "dinov2" / "tiny_a.pth", weights_only=True).items()}
    original["blocks.0.attn.qkv.weight"][3, 5] = float("nan")
    original["blocks.1.mlp.fc2.bias"][0] = float("inf")
    path = tmp_path / f"diverged{suffix}"
    torch.save(original, path) if suffix == ".pth" else save_file(original, str(path))
    with pytest.raises(CheckpointError, match=r"diverged.* blocks\.0\.attn\.qkv\.weight holds 1 non-finite value"):
        SnDModel.from_original_checkpoint(path, num_attention_heads=4)


# ----------------------------------------------------------------------------- DINOv2 training layouts
def _heads(width: int) -> dict[str, torch.Tensor]:
    """Weights of DINOv2's DINO and iBOT heads (dinov2/layers/dino_head.py), as its training saves them."""
    return {
        "dino_head.mlp.0.weight": torch.randn(16, width),
        "dino_head.last_layer.weight_g": torch.ones(32, 1),
        "ibot_head.mlp.0.weight": torch.randn(16, width),
    }


def _chunked(state_dict: dict[str, torch.Tensor], chunks: int, global_index: bool) -> dict[str, torch.Tensor]:
    """DINOv2's `block_chunks` layout: blocks.{chunk}.{i}.*, i global (dinov2) or local to the chunk."""
    depth = 1 + max(int(key.split(".")[1]) for key in state_dict if key.startswith("blocks."))
    size = depth // chunks
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            chunk, inner = divmod(int(index), size)
            key = f"blocks.{chunk}.{int(index) if global_index else inner}.{rest}"
        renamed[key] = value
    return renamed


def test_dinov2_training_checkpoints_load_their_backbone(tmp_path, fixtures_dir, recwarn):
    original = torch.load(fixtures_dir / "dinov2" / "tiny_a.pth", weights_only=True)
    width = original["cls_token"].shape[-1]
    student = {key: value + 1 for key, value in original.items()}
    checkpoints = {  # name -> (checkpoint, what the warning must say, or None for no warning)
        "teacher_checkpoint.pth": (
            {"teacher": {**{f"backbone.{k}": v for k, v in original.items()}, **_heads(width)}},
            r"ignored the head weights beside it \(dino_head\.\*, ibot_head\.\*: 3 tensors\)",
        ),
        "model_0000099.rank_0.pth": (
            {
                "model": {
                    **{f"student.backbone.{k}": v for k, v in student.items()},
                    **{f"teacher.backbone.{k}": v for k, v in original.items()},
                    **{f"teacher.{k}": v for k, v in _heads(width).items()},
                },
                "iteration": 99,
            },
            r"used the teacher\.\* weights and ignored student\.\*",
        ),
        "global_chunks.pth": ({"teacher": {f"backbone.{k}": v for k, v in _chunked(original, 2, True).items()}}, None),
        "local_chunks.pth": (_chunked(original, 2, False), None),
        "both.pth": ({"student": student, "teacher": original}, r"used 'teacher' and ignored \['student'\]"),
    }
    for name, (checkpoint, warning) in checkpoints.items():
        torch.save(checkpoint, tmp_path / name)
        recwarn.clear()
        loaded = load_original_checkpoint(tmp_path / name)
        assert list(loaded) == list(original), name
        assert all(torch.equal(loaded[key], original[key]) for key in original), name
        messages = [str(w.message) for w in recwarn if str(tmp_path) in str(w.message)]
        if warning is None:
            assert not messages, (name, messages)
        else:
            assert len(messages) == 1 and re.search(warning, messages[0]), (name, messages)


def test_unknown_layouts_name_the_keys_not_understood(tmp_path, fixtures_dir):
    original = torch.load(fixtures_dir / "dinov2" / "tiny_a.pth", weights_only=True)
    cases = {
        "decoder.pth": (
            {**{f"backbone.{k}": v for k, v in original.items()}, "decoder.weight": torch.zeros(2)},
            r"decoder.pth: keys beside the backbone.\* weights that are neither backbone nor DINOv2 heads \(1\): decoder.weight",
        ),
        "shard.pth": (
            {"model": {"teacher.backbone._fsdp_wrapped_module._flat_param": torch.zeros(8)}},
            r"shard.pth is one rank's shard of an FSDP checkpoint",
        ),
        "other.pth": (
            {"encoder.weight": torch.zeros(2), "decoder.bias": torch.zeros(2)},
            r"key 'cls_token' is missing .* keys it does not understand \(2\): decoder.bias, encoder.weight",
        ),
        "no_mlp.pth": (
            {k: v for k, v in original.items() if ".mlp." not in k},
            r"key 'blocks.0.mlp.fc1.weight' is missing",
        ),
        "mixed_chunks.pth": (
            {**_chunked(original, 2, True), "blocks.7.norm1.weight": torch.zeros(64)},
            r"mixes chunked blocks.\{chunk\}.\{i\} keys with plain block keys: blocks.7.norm1.weight",
        ),
    }
    for name, (checkpoint, message) in cases.items():
        torch.save(checkpoint, tmp_path / name)
        with pytest.raises(CheckpointError, match=message):
            SnDModel.from_original_checkpoint(tmp_path / name, num_attention_heads=4)


# ----------------------------------------------------------------------------- the head-count sidecar
def test_sidecar_round_trips_what_the_tensors_cannot_tell(tmp_path, recwarn):
    config = SnDConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, image_size=28, layer_norm_eps=1e-5, blending=True)
    model = SnDModel(config).eval()
    path = save_original_checkpoint(model, tmp_path / "student_original.pth")
    record = json.loads(sidecar_path(path).read_text())
    assert record["config"]["num_attention_heads"] == 3 and record["checkpoint"] == "student_original.pth"
    pixel_values = torch.randn(1, 3, 28, 42)
    expected = model(pixel_values).feature_map

    loaded = SnDModel.from_original_checkpoint(path)
    assert (loaded.config.num_attention_heads, loaded.config.layer_norm_eps, loaded.config.blending) == (3, 1e-5, True)
    assert torch.equal(loaded(pixel_values).feature_map, expected)
    assert not [w for w in recwarn if "is a guess" in str(w.message)]

    with pytest.raises(CheckpointError, match=r"num_attention_heads=1 \(sidecar: 3\) contradict its sidecar"):
        SnDModel.from_original_checkpoint(path, num_attention_heads=1)
    sidecar_path(path).rename(tmp_path / "kept.json")
    with pytest.warns(UserWarning, match="num_attention_heads=1 is a guess"):
        guessed = SnDModel.from_original_checkpoint(path)  # without it: one 48-wide head, other features
    assert not torch.allclose(guessed(pixel_values).feature_map, expected, atol=1e-3)

    (tmp_path / "kept.json").rename(sidecar_path(path))
    swiglu = SnDConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, use_swiglu_ffn=True)
    swiglu_path = save_original_checkpoint(SnDModel(swiglu), tmp_path / "swiglu.pth")  # mlp_ratio 4 -> width 176
    assert SnDModel.from_original_checkpoint(swiglu_path).config.num_attention_heads == 2
    record = json.loads(sidecar_path(swiglu_path).read_text())
    record["config"]["num_hidden_layers"] = 2  # right file, wrong architecture
    sidecar_path(swiglu_path).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"swiglu.pth.json does not describe the tensors .* blocks.1.attn.proj.bias"):
        SnDModel.from_original_checkpoint(swiglu_path)

    torch.save(to_original_state_dict(SnDModel(config).state_dict(), config), path)  # the .pth replaced later
    with pytest.raises(CheckpointError, match="describes another file than .*student_original.pth"):
        SnDModel.from_original_checkpoint(path)


# ----------------------------------------------------------------------------- LoRA, checked against peft
class _OriginalNames(nn.Module):
    """The module kinds SnD adapts with LoRA, under their torch.hub names: `patch_embed.proj` (Conv2d 14x14)
    and `blocks.0.attn.qkv` / `blocks.0.attn.proj` (Linear); `norm` for peft's modules_to_save."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, 16, 14, 14)
        self.blocks = nn.ModuleList([nn.Module()])
        self.blocks[0].attn = nn.Module()
        self.blocks[0].attn.qkv = nn.Linear(16, 48)
        self.blocks[0].attn.proj = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)


def _peft(base: nn.Module, config: LoraConfig, **options) -> nn.Module:
    """`get_peft_model` with random LoRA updates (peft starts B at zero, which would hide any error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's own notes (fan_in_fan_out reset for nn.Linear, ...)
        model = get_peft_model(base, config, **options)
    _randomise_adapters(model)
    return model


def _randomise_adapters(model: nn.Module) -> None:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.normal_()


def _assert_identical(merged: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(merged) == list(expected)
    for key, tensor in expected.items():
        assert merged[key].dtype == tensor.dtype and torch.equal(merged[key], tensor), key


LORA_SETTINGS = {
    "r4-alpha8": {"r": 4, "lora_alpha": 8},
    "lora_bias": {"r": 2, "lora_alpha": 4, "lora_bias": True},
    "rslora": {"r": 8, "lora_alpha": 16, "use_rslora": True},
    "fan_in_fan_out": {"r": 4, "lora_alpha": 8, "fan_in_fan_out": True},
    "patterns": {"r": 4, "lora_alpha": 8, "rank_pattern": {"qkv": 6}, "alpha_pattern": {"attn.proj": 3}},
    "modules_to_save": {"r": 2, "lora_alpha": 2, "modules_to_save": ["norm"]},
}


@pytest.mark.parametrize("setting", sorted(LORA_SETTINGS))
def test_lora_merges_bit_identically_to_peft(tmp_path, setting):
    torch.manual_seed(0)
    peft_model = _peft(_OriginalNames(), LoraConfig(target_modules=["qkv", "proj"], **LORA_SETTINGS[setting]))
    path = tmp_path / "peft.pth"
    torch.save(peft_model.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"peft.pth: .*unmerged LoRA.*pass lora_alpha="):
        load_original_checkpoint(path)
    merged = load_original_checkpoint(path, lora_config=peft_model.peft_config["default"])
    _assert_identical(merged, peft_model.merge_and_unload().state_dict())


@pytest.mark.parametrize("autocast_adapter_dtype", [True, False], ids=["float32-adapters", "bfloat16-adapters"])
def test_lora_merge_in_bfloat16_is_peft_s(tmp_path, autocast_adapter_dtype):
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_bias=True, target_modules=["qkv", "proj"])
    peft_model = _peft(_OriginalNames().to(torch.bfloat16), config, autocast_adapter_dtype=autocast_adapter_dtype)
    torch.save(peft_model.state_dict(), tmp_path / "peft.pth")
    merged = load_original_checkpoint(tmp_path / "peft.pth", lora_alpha=8)
    _assert_identical(merged, peft_model.merge_and_unload().state_dict())


def test_lora_scaling_from_alpha_flags_or_adapter_config(tmp_path):
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, use_rslora=True, target_modules=["qkv", "proj"])
    peft_model = _peft(_OriginalNames(), config)
    torch.save(peft_model.state_dict(), tmp_path / "peft.pth")
    peft_model.save_pretrained(tmp_path / "adapter")  # writes peft's adapter_config.json
    from_flags = load_original_checkpoint(tmp_path / "peft.pth", lora_alpha=16, use_rslora=True)
    from_json = load_original_checkpoint(tmp_path / "peft.pth", lora_config=tmp_path / "adapter" / "adapter_config.json")
    from_folder = load_original_checkpoint(tmp_path / "peft.pth", lora_config=tmp_path / "adapter")
    expected = peft_model.merge_and_unload().state_dict()
    for merged in (from_flags, from_json, from_folder):
        _assert_identical(merged, expected)
    wrong_scaling = load_original_checkpoint(tmp_path / "peft.pth", lora_alpha=16)  # rsLoRA forgotten: another model
    assert not torch.equal(wrong_scaling["blocks.0.attn.qkv.weight"], expected["blocks.0.attn.qkv.weight"])
    with pytest.raises(CheckpointError, match=r"rank 8, its config says r=4"):
        load_original_checkpoint(tmp_path / "peft.pth", lora_config=LoraConfig(r=4, lora_alpha=16))


def test_lora_bias_is_added_scaled(tmp_path):
    """The issue's case: r=2, alpha=4, lora_B.bias = 1 adds (alpha / r) * 1 = 2.0 to every bias entry."""
    peft_model = _peft(_OriginalNames(), LoraConfig(r=2, lora_alpha=4, lora_bias=True, target_modules=["qkv"]))
    with torch.no_grad():
        peft_model.base_model.model.blocks[0].attn.qkv.lora_B["default"].bias.fill_(1.0)
    base_bias = peft_model.base_model.model.blocks[0].attn.qkv.base_layer.bias.detach().clone()
    torch.save(peft_model.state_dict(), tmp_path / "peft.pth")
    merged = load_original_checkpoint(tmp_path / "peft.pth", lora_alpha=4)
    assert torch.equal(merged["blocks.0.attn.qkv.bias"], base_bias + 2.0)


def test_several_adapters_merge_in_order_like_peft(tmp_path):
    torch.manual_seed(0)
    peft_model = _peft(_OriginalNames(), LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "proj"]))
    peft_model.add_adapter("second", LoraConfig(r=2, lora_alpha=3, use_rslora=True, lora_bias=True, target_modules=["qkv"]))
    _randomise_adapters(peft_model)
    torch.save(peft_model.state_dict(), tmp_path / "peft.pth")
    configs = dict(peft_model.peft_config)
    with pytest.raises(CheckpointError, match=r"holds 2 LoRA adapters \['default', 'second'\]: pass lora_config="):
        load_original_checkpoint(tmp_path / "peft.pth", lora_alpha=8)

    only_default = copy.deepcopy(peft_model)  # peft merges its active adapters; "default" is active
    with pytest.warns(UserWarning, match=r"LoRA adapters \['second'\] are not merged"):
        merged = load_original_checkpoint(tmp_path / "peft.pth", lora_config={"default": configs["default"]})
    _assert_identical(merged, only_default.merge_and_unload().state_dict())

    peft_model.base_model.set_adapter(["default", "second"])
    merged = load_original_checkpoint(tmp_path / "peft.pth", lora_config={"default": configs["default"], "second": configs["second"]})
    _assert_identical(merged, peft_model.merge_and_unload().state_dict())


def test_peft_weights_it_cannot_merge_are_refused_by_name(tmp_path):
    peft_model = _peft(_OriginalNames(), LoraConfig(r=2, lora_alpha=4, use_dora=True, target_modules=["qkv"]))
    torch.save(peft_model.state_dict(), tmp_path / "dora.pth")
    with pytest.raises(CheckpointError, match=r"cannot merge \(DoRA \(use_dora=True\)\): blocks.0.attn.qkv.lora_magnitude_vector"):
        load_original_checkpoint(tmp_path / "dora.pth", lora_alpha=4)


class _TorchHubViT(nn.Module):
    """The module tree of torch.hub's `DinoVisionTransformer` (parameters only), so that peft adapts a
    whole DINOv2 under its original names, as the original SnD trainer does."""

    def __init__(self, config: SnDConfig) -> None:
        super().__init__()
        width, hidden = config.hidden_size, int(config.hidden_size * config.mlp_ratio)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.grid_size**2, width))
        self.mask_token = nn.Parameter(torch.zeros(1, width))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(config.num_channels, width, config.patch_size, config.patch_size)
        self.blocks = nn.ModuleList()
        for _ in range(config.num_hidden_layers):
            block = nn.Module()
            block.norm1, block.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
            block.attn, block.mlp, block.ls1, block.ls2 = nn.Module(), nn.Module(), nn.Module(), nn.Module()
            block.attn.qkv, block.attn.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            block.mlp.fc1, block.mlp.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)
            block.ls1.gamma, block.ls2.gamma = nn.Parameter(torch.ones(width)), nn.Parameter(torch.ones(width))
            self.blocks.append(block)
        self.norm = nn.LayerNorm(width)


def test_lora_trained_dinov2_gives_peft_s_features(tmp_path):
    """The original SnD recipe (LoRA r 8, alpha 8 on "qkv" and "proj", which also hits patch_embed.proj),
    on a whole tiny DINOv2: merged here, the features equal those of peft's merged model exactly."""
    config = SnDConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28)
    torch.manual_seed(0)
    original = to_original_state_dict(SnDModel(config).state_dict(), config)
    vit = _TorchHubViT(config)
    vit.load_state_dict(original, strict=True)
    peft_model = _peft(vit, LoraConfig(r=8, lora_alpha=8, lora_dropout=0.1, target_modules=["qkv", "proj"]))
    torch.save(peft_model.state_dict(), tmp_path / "student.pth")

    ours = SnDModel.from_original_checkpoint(tmp_path / "student.pth", lora_alpha=8, num_attention_heads=2)
    reference = SnDModel(config).eval()
    reference.load_state_dict(convert_original_state_dict(peft_model.merge_and_unload().state_dict(), config), strict=True)
    _assert_identical(ours.state_dict(), reference.state_dict())
    pixel_values = torch.randn(2, 3, 28, 42)
    assert torch.equal(ours(pixel_values).feature_map, reference(pixel_values).feature_map)
