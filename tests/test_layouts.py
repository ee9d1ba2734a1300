"""Checkpoint layouts of the paper's baselines: torch.hub and timm DINOv2, with and without registers.

Each layout is replayed with random ViT-S weights of its exact keys and compared with transformers'
`Dinov2WithRegistersModel`, whose forward is the numerics of torch.hub's register models and of timm with
`dynamic_img_size=True` (exact-size antialiased bicubic position resize, tokens [CLS, registers, patches]);
with `num_register_tokens=0` it is timm's plain DINOv2. timm itself is the reference where it imports
(`test_timm_forward_matches`): beside this CPU torch its torchvision dependency does not load.
"""

from __future__ import annotations

import importlib
import json
import re

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from baseline_weights import SIZES, TOLERANCE, random_hub_state_dict, timm_layout  # tests/ is on sys.path
from snd_hf import SnDConfig, SnDModel
from snd_hf.loading import CheckpointError, read_original_checkpoint, to_original_state_dict

REGISTERS = 4


def reference_model(
    state_dict: dict[str, torch.Tensor], class_position: bool = True, registers_model: bool = True
) -> Dinov2WithRegistersModel | Dinov2Model:
    """transformers' Dinov2WithRegistersModel (or Dinov2Model) holding torch.hub-layout weights (q, k, v split from qkv)."""
    width = state_dict["cls_token"].shape[-1]
    registers = state_dict["register_tokens"].shape[1] if "register_tokens" in state_dict else 0
    config = Dinov2WithRegistersConfig(
        hidden_size=width, num_hidden_layers=12, num_attention_heads=6, image_size=518, patch_size=14,
        num_register_tokens=registers, layer_norm_eps=1e-6,
    )
    renamed = {
        "embeddings.cls_token": state_dict["cls_token"],
        "embeddings.mask_token": state_dict["mask_token"],
        "embeddings.position_embeddings": state_dict["pos_embed"],
        "embeddings.register_tokens": state_dict.get("register_tokens", torch.zeros(1, 0, width)),
        "embeddings.patch_embeddings.projection.weight": state_dict["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state_dict["patch_embed.proj.bias"],
        "layernorm.weight": state_dict["norm.weight"],
        "layernorm.bias": state_dict["norm.bias"],
    }
    if not class_position:  # timm's register layout adds no position to CLS
        renamed["embeddings.position_embeddings"] = torch.cat((torch.zeros(1, 1, width), state_dict["pos_embed"][:, 1:]), 1)
    for i in range(12):
        block, layer = f"blocks.{i}", f"encoder.layer.{i}"
        for name, weight in zip(("q_proj", "k_proj", "v_proj"), state_dict[f"{block}.attn.qkv.weight"].chunk(3)):
            renamed[f"{layer}.attention.{name}.weight"] = weight
        for name, bias in zip(("q_proj", "k_proj", "v_proj"), state_dict[f"{block}.attn.qkv.bias"].chunk(3)):
            renamed[f"{layer}.attention.{name}.bias"] = bias
        pairs = {
            "attention.o_proj": "attn.proj", "norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
        }
        for ours, theirs in pairs.items():
            for param in ("weight", "bias"):
                renamed[f"{layer}.{ours}.{param}"] = state_dict[f"{block}.{theirs}.{param}"]
        renamed[f"{layer}.layer_scale1.lambda1"] = state_dict[f"{block}.ls1.gamma"]
        renamed[f"{layer}.layer_scale2.lambda1"] = state_dict[f"{block}.ls2.gamma"]
    if not registers_model:
        config = Dinov2Config(**{key: getattr(config, key) for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size", "layer_norm_eps")})
        del renamed["embeddings.register_tokens"]
    model = (Dinov2WithRegistersModel if registers_model else Dinov2Model)(config).eval()
    model.load_state_dict(renamed, strict=True)
    return model


def assert_same_features(model: SnDModel, reference, registers: int) -> None:
    torch.manual_seed(1)
    for height, width in SIZES:
        pixel_values = torch.randn(1, 3, height, width)
        with torch.no_grad():
            ours = model(pixel_values)
            theirs = reference(pixel_values).last_hidden_state
        patches = theirs[:, 1 + registers :].reshape(1, height // 14, width // 14, -1).permute(0, 3, 1, 2)
        errors = {
            "tokens": (ours.last_hidden_state - theirs).abs().max().item(),
            "feature_map": (ours.feature_map - patches).abs().max().item(),
            "pooler": (ours.pooler_output - theirs[:, 0]).abs().max().item(),
        }
        assert max(errors.values()) <= TOLERANCE, f"{height}x{width}: {errors}"


@pytest.fixture(scope="module")
def hub_plain():
    return random_hub_state_dict(0)


@pytest.fixture(scope="module")
def hub_registers():
    return random_hub_state_dict(REGISTERS, seed=1)


def test_timm_plain_layout_is_fit3d_dinov2_s(hub_plain, fixtures_dir, tmp_path):
    """FiT3D's ViT-S: timm's 174 keys (torch.hub's minus mask_token); loads with timm's resize and equals it."""
    published = json.loads((fixtures_dir / "dinov2" / "dinov2_vits14_keys.json").read_text())
    timm = timm_layout(hub_plain)
    assert len(timm) == 174 and set(timm) == set(published) - {"mask_token"}
    torch.save(timm, tmp_path / "fit3d_small.pth")
    checkpoint = read_original_checkpoint(tmp_path / "fit3d_small.pth")
    assert checkpoint.layout == "timm"
    assert torch.equal(checkpoint.state_dict["mask_token"], torch.zeros(1, 384))
    model = SnDModel.from_original_checkpoint(tmp_path / "fit3d_small.pth")
    assert (model.config.interpolate_offset, model.config.interpolate_antialias) == (0.0, True)
    reference = reference_model({**timm, "mask_token": torch.zeros(1, 384)})
    assert_same_features(model, reference, 0)


def test_timm_register_layout(hub_registers, tmp_path):
    """FiT3D's DINOv2-reg-S: reg_token [1, 4, C] and a 1369-position pos_embed without class slot."""
    timm = timm_layout(hub_registers)
    assert timm["pos_embed"].shape == (1, 1369, 384) and timm["reg_token"].shape == (1, 4, 384)
    torch.save(timm, tmp_path / "fit3d_reg_small.pth")
    model = SnDModel.from_original_checkpoint(tmp_path / "fit3d_reg_small.pth")
    assert model.config.num_register_tokens == REGISTERS
    assert_same_features(model, reference_model(hub_registers, class_position=False), REGISTERS)


def test_torch_hub_register_layout(hub_registers, tmp_path):
    """dinov2_vits14_reg: register_tokens in the torch.hub layout, its own exact antialiased resize."""
    torch.save(hub_registers, tmp_path / "dinov2_vits14_reg.pth")
    checkpoint = read_original_checkpoint(tmp_path / "dinov2_vits14_reg.pth")
    assert checkpoint.layout == "torch.hub registers"
    model = SnDModel.from_original_checkpoint(tmp_path / "dinov2_vits14_reg.pth")
    assert_same_features(model, reference_model(hub_registers), REGISTERS)


def test_register_model_round_trips_through_the_original_layout(hub_registers, tmp_path):
    """Registers survive save_original_checkpoint / from_original_checkpoint (the sidecar keeps the resize)."""
    from snd_hf.loading import save_original_checkpoint

    torch.save(timm_layout(hub_registers), tmp_path / "timm.pth")
    model = SnDModel.from_original_checkpoint(tmp_path / "timm.pth")
    save_original_checkpoint(model, tmp_path / "exported.pth")
    assert set(torch.load(tmp_path / "exported.pth", weights_only=True)) == set(hub_registers)
    again = SnDModel.from_original_checkpoint(tmp_path / "exported.pth")
    pixel_values = torch.randn(1, 3, 98, 126)
    with torch.no_grad():
        assert torch.equal(model(pixel_values).feature_map, again(pixel_values).feature_map)


@pytest.mark.parametrize("registers", [0, REGISTERS])
@pytest.mark.parametrize("names", ["v5", "v4"])
def test_transformers_layouts(registers, names, hub_plain, hub_registers, tmp_path):
    """transformers' Dinov2Model and Dinov2WithRegistersModel weights (v5 names, and the v4 names of the Hub's
    facebook/dinov2-* files) load, with each model's own resize, and equal its forward."""
    hub = hub_registers if registers else hub_plain
    reference = reference_model(hub, registers_model=bool(registers))
    state_dict = reference.state_dict()
    if names == "v4":
        old = {"q_proj": "attention.query", "k_proj": "attention.key", "v_proj": "attention.value", "o_proj": "output.dense"}
        state_dict = {re.sub(r"attention\.(q_proj|k_proj|v_proj|o_proj)", lambda m: "attention." + old[m[1]], key): value for key, value in state_dict.items()}
    torch.save(state_dict, tmp_path / "model.pth")
    checkpoint = read_original_checkpoint(tmp_path / "model.pth")
    assert checkpoint.layout == ("transformers registers" if registers else "transformers")
    assert all(torch.equal(checkpoint.state_dict[key], value) for key, value in hub.items())
    model = SnDModel.from_original_checkpoint(tmp_path / "model.pth")
    assert model.config.interpolate_antialias == bool(registers)
    if names == "v5":  # the v4 names hold the same tensors: one forward comparison per model suffices
        assert_same_features(model, reference, registers)


def test_timm_layout_refuses_other_missing_keys(hub_plain, tmp_path):
    """Only mask_token is ever filled: any other missing key is still refused by name."""
    timm = timm_layout(hub_plain)
    del timm["norm.bias"]
    torch.save(timm, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"missing \(1\): layernorm.bias") as error:
        SnDModel.from_original_checkpoint(tmp_path / "broken.pth")
    assert "mask_token" not in str(error.value)


def test_timm_forward_matches(hub_plain, hub_registers, tmp_path):
    """timm's own VisionTransformer (dynamic_img_size=True) on the same weights, where timm imports."""
    try:
        timm = importlib.import_module("timm")
    except Exception as error:  # timm needs a torchvision built for the installed torch (not the CPU one here)
        pytest.skip(f"timm's reference needs the 'timm' extra and a torchvision that loads beside this torch ({error!r})")
    for name, state_dict in (("vit_small_patch14_dinov2", hub_plain), ("vit_small_patch14_reg4_dinov2", hub_registers)):
        reference = timm.create_model(name, pretrained=False, dynamic_img_size=True, num_classes=0).eval()
        weights = timm_layout(state_dict)
        reference.load_state_dict(weights, strict=True)
        torch.save(weights, tmp_path / f"{name}.pth")
        model = SnDModel.from_original_checkpoint(tmp_path / f"{name}.pth")
        registers = model.config.num_register_tokens
        for height, width in SIZES:
            pixel_values = torch.randn(1, 3, height, width)
            with torch.no_grad():
                theirs = reference.forward_features(pixel_values)
                ours = model(pixel_values).last_hidden_state
            assert (ours - theirs).abs().max().item() <= TOLERANCE, (name, height, width)
            assert registers == (4 if "reg4" in name else 0)


def tiny_hub_state_dict(num_register_tokens: int = 0) -> dict[str, torch.Tensor]:
    config = SnDConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56, num_register_tokens=num_register_tokens)
    return to_original_state_dict(SnDModel(config).state_dict(), config)


def _transformers_layout() -> dict[str, torch.Tensor]:
    config = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14)
    return Dinov2WithRegistersModel(config).state_dict()


@pytest.mark.parametrize(
    "layout, build, message",
    [
        (
            "compiled submodule",
            lambda: {f"model._orig_mod.{key}": value for key, value in tiny_hub_state_dict().items()},
            r"torch.compile's '_orig_mod.' prefix is inside the keys .*strip '_orig_mod.'",
        ),
        (
            "Lightning module",
            lambda: {"state_dict": {f"net.{key}": value for key, value in tiny_hub_state_dict().items()}, "epoch": 2, "pytorch-lightning_version": "2.1.3"},
            r"every key starts with 'net.'.*PyTorch Lightning module's self.net\): save that module's own state_dict\(\), or strip 'net.'",
        ),
        (
            "snd-hf native weights",
            lambda: SnDModel(SnDConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56)).state_dict(),
            r"this is snd-hf's native layout: load its folder with SnDModel.from_pretrained",
        ),
        (
            "transformers layout without its value projection",
            lambda: {key: value for key, value in _transformers_layout().items() if "layer.1.attention.v_proj" not in key},
            r"transformers' DINOv2 layout lacks the \['v'\] part\(s\) of blocks.1.attn.qkv",
        ),
        (
            "timm with a head",
            lambda: {**timm_layout(tiny_hub_state_dict()), "head.weight": torch.zeros(10, 32), "head.bias": torch.zeros(10)},
            r"unexpected \(2\): head.bias, head.weight; this is a timm model with a classifier head .*num_classes=0",
        ),
        (
            "timm and torch.hub registers at once",
            lambda: {**tiny_hub_state_dict(2), "reg_token": torch.zeros(1, 2, 32)},
            r"both timm's reg_token and torch.hub's register_tokens",
        ),
        (
            "peft, unmerged",
            lambda: {
                **{key.replace("attn.qkv.weight", "attn.qkv.base_layer.weight"): value for key, value in tiny_hub_state_dict().items()},
                "blocks.0.attn.qkv.lora_A.default.weight": torch.zeros(4, 32),
                "blocks.0.attn.qkv.lora_B.default.weight": torch.zeros(96, 4),
            },
            r"unmerged LoRA weights .*pass lora_alpha=",
        ),
    ],
)
def test_wrong_layouts_are_named_with_the_fix(layout, build, message, tmp_path):
    torch.save(build(), tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match=message) as error:
        SnDModel.from_original_checkpoint(tmp_path / "weights.pth", num_attention_heads=2)
    assert "\n" not in str(error.value), layout


def test_snd_convert_reads_the_timm_register_layout(tmp_path, capsys):
    """`snd convert` of a FiT3D-reg file: a native folder with the registers and timm's resize."""
    from snd_hf.cli import main

    torch.manual_seed(0)
    state_dict = tiny_hub_state_dict(2)
    torch.save(timm_layout(state_dict), tmp_path / "fit3d_reg.pth")
    assert main(["convert", str(tmp_path / "fit3d_reg.pth"), str(tmp_path / "native"), "--num-heads", "2"]) == 0
    native = SnDModel.from_pretrained(tmp_path / "native")
    assert native.config.num_register_tokens == 2 and native.config.interpolate_antialias
    assert torch.equal(native.embeddings.register_tokens, state_dict["register_tokens"])


def test_registers_stay_out_of_every_dense_output():
    """Tokens run [CLS, registers, patches]: feature maps, intermediate layers, backbone maps and the eval
    features hold the patches only."""
    from snd_hf import SnDBackbone, SnDImageProcessor
    from snd_hf.eval.features import FeatureModel, extract_features

    torch.manual_seed(0)
    config = SnDConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56, num_register_tokens=3)
    model = SnDModel(config).eval()
    images = torch.rand(2, 3, 98, 126)
    pixel_values = (images - 0.45) / 0.225
    with torch.no_grad():
        output = model(pixel_values, output_hidden_states=True)
        (last,) = model.get_intermediate_layers(pixel_values, 1)
        (last_map,) = model.get_intermediate_layers(pixel_values, 1, reshape=True)
    patches = output.last_hidden_state[:, 4:]
    assert output.last_hidden_state.shape == (2, 1 + 3 + 7 * 9, 32)
    assert torch.equal(last, patches) and torch.equal(last_map, output.feature_map)
    assert torch.equal(output.feature_map, patches.transpose(1, 2).reshape(2, 32, 7, 9))
    backbone = SnDBackbone(SnDConfig(**{**config.to_dict(), "out_features": ["stage2"]})).eval()
    backbone.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(backbone(pixel_values).feature_maps[0], output.feature_map)
    features = extract_features(FeatureModel("registers", "", model, "hash"), images, (98, 126))
    mean, std = (torch.tensor(values)[:, None, None] for values in (SnDImageProcessor.image_mean, SnDImageProcessor.image_std))
    with torch.no_grad():
        reference = model((images - mean) / std, output_hidden_states=True)
    assert torch.allclose(features.prenorm, reference.hidden_states[-1][:, 4:].transpose(1, 2).reshape(2, 32, 7, 9))
    assert torch.allclose(features.patch, reference.feature_map)
