"""SnDBackbone: feature maps, AutoBackbone, and use inside transformers task models with SnD weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoBackbone,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    DPTConfig,
    DPTForDepthEstimation,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

import snd_hf
from snd_hf import SnDBackbone, SnDConfig, SnDModel, load_backbone_weights
from snd_hf.loading import CheckpointError, save_original_checkpoint

TINY = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": 56}
STAGES = ["stage1", "stage2", "stage3", "stage4"]


@pytest.fixture(scope="module")
def source() -> SnDModel:
    torch.manual_seed(0)
    return SnDModel(SnDConfig(**TINY)).eval()


def assert_same_weights(backbone: torch.nn.Module, model: SnDModel) -> None:
    expected = model.state_dict()
    actual = backbone.state_dict()
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


def test_feature_maps_match_model_layers(source):
    backbone = SnDBackbone(SnDConfig(**TINY, out_features=["stem", "stage2", "stage4"])).eval()
    load_backbone_weights(backbone, source)
    pixel_values = torch.randn(2, 3, 42, 70)
    with torch.no_grad():
        output = backbone(pixel_values, output_hidden_states=True)
        reference = source(pixel_values, output_hidden_states=True)
    assert [tuple(m.shape) for m in output.feature_maps] == [(2, 32, 3, 5)] * 3
    assert backbone.channels == [32, 32, 32]
    for feature_map, index in zip(output.feature_maps, (0, 2, 4)):
        expected = source.layernorm(reference.hidden_states[index])[:, 1:].reshape(2, 3, 5, 32).permute(0, 3, 1, 2)
        torch.testing.assert_close(feature_map, expected)
    torch.testing.assert_close(output.feature_maps[-1], reference.feature_map)
    assert len(output.hidden_states) == 5


def test_tokens_without_layernorm_or_reshape(source):
    config = SnDConfig(**TINY, out_indices=[4], apply_layernorm=False, reshape_hidden_states=False)
    backbone = AutoBackbone.from_config(config).eval()
    assert isinstance(backbone, SnDBackbone)
    load_backbone_weights(backbone, source)
    pixel_values = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        (tokens,) = backbone(pixel_values).feature_maps
        prenorm = source(pixel_values, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(tokens, prenorm)
    assert backbone(pixel_values).hidden_states is None


def dpt(reshape: bool) -> DPTForDepthEstimation:
    config = DPTConfig(
        backbone_config=SnDConfig(**TINY, out_features=STAGES, reshape_hidden_states=reshape),
        is_hybrid=False,
        hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        reassemble_factors=[4, 2, 1, 0.5],
        fusion_hidden_size=16,
    )
    return DPTForDepthEstimation(config)


def depth_anything() -> DepthAnythingForDepthEstimation:
    config = DepthAnythingConfig(
        backbone_config=SnDConfig(**TINY, out_features=STAGES, reshape_hidden_states=False),
        patch_size=14,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )
    return DepthAnythingForDepthEstimation(config)


def upernet() -> UperNetForSemanticSegmentation:
    config = UperNetConfig(
        backbone_config=SnDConfig(**TINY, out_features=STAGES),
        hidden_size=16,
        auxiliary_in_channels=32,
        auxiliary_channels=8,
        pool_scales=[1, 2],
        num_labels=5,
    )
    return UperNetForSemanticSegmentation(config)


@pytest.mark.parametrize("build", [lambda: dpt(False), depth_anything, upernet], ids=["dpt", "depth_anything", "upernet"])
def test_task_model_forward_backward_with_snd_weights(build, source):
    torch.manual_seed(1)
    task_model = build()
    assert isinstance(task_model.backbone, SnDBackbone)
    backbone = load_backbone_weights(task_model, source)
    assert backbone is task_model.backbone
    assert_same_weights(task_model.backbone, source)

    pixel_values = torch.randn(2, 3, 56, 84)
    if isinstance(task_model, UperNetForSemanticSegmentation):
        output = task_model(pixel_values, labels=torch.randint(0, 5, (2, 56, 84)))
        assert output.logits.shape == (2, 5, 56, 84)
        loss = output.loss
    else:
        prediction = task_model(pixel_values).predicted_depth
        assert prediction.ndim == 3 and prediction.shape[0] == 2 and torch.isfinite(prediction).all()
        loss = prediction.mean()
    loss.backward()
    qkv = task_model.backbone.encoder.layer[0].attention.qkv.weight
    assert qkv.grad is not None and qkv.grad.abs().sum() > 0


def test_load_from_original_file_and_native_directory(tmp_path, source):
    save_original_checkpoint(source, tmp_path / "original.pth")
    source.save_pretrained(tmp_path / "native")
    for weights in (tmp_path / "original.pth", tmp_path / "native", source.state_dict()):
        task_model = dpt(True)
        load_backbone_weights(task_model, weights)
        assert_same_weights(task_model.backbone, source)


def test_mismatched_weights_are_named(source):
    task_model = dpt(False)
    state_dict = dict(source.state_dict())
    del state_dict["layernorm.bias"]
    state_dict["encoder.layer.0.mlp.fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=r"missing \(1\): layernorm.bias.*misshaped.*fc1.weight: expected \(128, 32\)"):
        load_backbone_weights(task_model, state_dict)
    with pytest.raises(TypeError, match="SnDBackbone"):
        load_backbone_weights(torch.nn.Linear(2, 2), source)


def _saved_model(folder) -> SnDModel:
    torch.manual_seed(1)
    model = SnDModel(SnDConfig(**TINY)).eval()
    model.save_pretrained(folder)
    return model


def _expected_stages(model: SnDModel, pixel_values: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
    with torch.no_grad():
        hidden_states = model(pixel_values, output_hidden_states=True).hidden_states
    height, width = pixel_values.shape[-2] // 14, pixel_values.shape[-1] // 14
    return [
        model.layernorm(hidden_states[index])[:, 1:].reshape(1, height, width, -1).permute(0, 3, 1, 2)
        for index in indices
    ]


def test_snd_backbone_from_pretrained_reads_an_snd_checkpoint_directory_with_out_indices(tmp_path):
    """The documented way to a backbone from a local folder (transformers' AutoBackbone takes Hub ids only)."""
    model = _saved_model(tmp_path)
    backbone = SnDBackbone.from_pretrained(tmp_path, out_indices=[1, 3]).eval()
    assert backbone.out_features == ["stage1", "stage3"] and backbone.config.out_indices == [1, 3]
    pixel_values = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        feature_maps = backbone(pixel_values).feature_maps
    for actual, expected in zip(feature_maps, _expected_stages(model, pixel_values, [1, 3]), strict=True):
        torch.testing.assert_close(actual, expected)


def test_auto_backbone_from_a_hub_repo_id(hub, tmp_path):
    model = _saved_model(tmp_path)
    for path in tmp_path.iterdir():
        hub.add_file("lab/snd-tiny", path.name, path.read_bytes())
    backbone = AutoBackbone.from_pretrained("lab/snd-tiny", out_indices=[1, 3]).eval()
    assert isinstance(backbone, SnDBackbone) and backbone.out_features == ["stage1", "stage3"]
    pixel_values = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        feature_maps = backbone(pixel_values).feature_maps
    for actual, expected in zip(feature_maps, _expected_stages(model, pixel_values, [1, 3]), strict=True):
        torch.testing.assert_close(actual, expected)


PACKAGED = Path(snd_hf.__file__).parent / "assets" / "default"  # the package's own trained tiny model: 48 wide, 2 layers
_RELOAD = """
import sys
import torch
import snd_hf  # registers model type "snd" (transformers alone cannot read the backbone config)
from transformers import DPTForDepthEstimation

model = DPTForDepthEstimation.from_pretrained(sys.argv[1]).eval()
torch.manual_seed(0)
with torch.no_grad():
    print(repr(model(torch.randn(1, 3, 56, 84)).predicted_depth.double().sum().item()))
"""


def _packaged_dpt() -> DPTForDepthEstimation:
    backbone_config = SnDConfig.from_pretrained(PACKAGED, out_indices=[1, 2], reshape_hidden_states=False)
    config = DPTConfig(
        backbone_config=backbone_config, is_hybrid=False, hidden_size=backbone_config.hidden_size,
        neck_hidden_sizes=[16, 32], reassemble_factors=[2, 1], fusion_hidden_size=16,
    )  # fmt: skip
    return DPTForDepthEstimation(config)


def test_the_packaged_tiny_model_is_a_dpt_backbone_that_fine_tunes_saves_and_reloads_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = _packaged_dpt()
    load_backbone_weights(model, PACKAGED)
    assert_same_weights(model.backbone, SnDModel.from_pretrained(PACKAGED))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pixel_values, losses = torch.randn(2, 3, 56, 84), []
    for _ in range(3):
        loss = (model(pixel_values).predicted_depth - 1.0).abs().mean()  # L1 to a depth of 1 everywhere
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[2] < losses[0]
    model.eval().save_pretrained(tmp_path / "dpt")
    torch.manual_seed(0)
    with torch.no_grad():
        expected = model(torch.randn(1, 3, 56, 84)).predicted_depth.double().sum().item()
    result = subprocess.run([sys.executable, "-c", _RELOAD, str(tmp_path / "dpt")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.splitlines()[-1]) == pytest.approx(expected, rel=1e-5)
    # README's limit, still as it says: without `import snd_hf`, transformers' config registry has no "snd".
    unregistered = _RELOAD.replace("import snd_hf", "pass")
    result = subprocess.run([sys.executable, "-c", unregistered, str(tmp_path / "dpt")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stderr.rstrip().endswith("KeyError: 'snd'")


def test_a_dinov2_backbone_config_would_load_without_snd_hf_but_change_the_features():
    # Why a task model keeps model type "snd" rather than transformers' own "dinov2": the same weights (qkv
    # split into q, k, v) give the same features only at the config's image size, since transformers' Dinov2
    # resizes position embeddings to the target grid and SnD (as torch.hub DINOv2) scales them with an offset.
    from transformers import Dinov2Backbone, Dinov2Config

    snd = SnDBackbone.from_pretrained(PACKAGED, out_indices=[1, 2], reshape_hidden_states=False).eval()
    names = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "image_size", "patch_size", "layer_norm_eps",
             "layerscale_value", "qkv_bias", "use_swiglu_ffn", "hidden_act", "apply_layernorm")  # fmt: skip
    config = Dinov2Config(**{name: getattr(snd.config, name) for name in names}, out_indices=[1, 2], reshape_hidden_states=False)
    dinov2 = Dinov2Backbone(config).eval()
    state_dict = {}
    for key, value in snd.state_dict().items():
        if ".attention.qkv." in key:
            state_dict.update({key.replace("qkv", f"{part}_proj"): chunk for part, chunk in zip("qkv", value.chunk(3))})
        else:
            state_dict[key.replace(".attention.proj.", ".attention.o_proj.")] = value
    dinov2.load_state_dict(state_dict, strict=True)
    torch.manual_seed(0)
    with torch.no_grad():
        for size, equal in (((224, 224), True), ((56, 84), False)):
            pixel_values = torch.randn(1, 3, *size)
            ours, theirs = snd(pixel_values).feature_maps[-1], dinov2(pixel_values).feature_maps[-1]
            assert torch.equal(ours, theirs) == equal, size
    assert (ours - theirs).abs().max() > 0.25 * ours.abs().mean()  # 56x84: a different model, not round-off


def test_a_backbone_of_another_size_is_one_line_naming_both():
    model = DPTForDepthEstimation(
        DPTConfig(backbone_config=SnDConfig.from_variant("small", out_indices=[1, 2]), is_hybrid=False,
                  neck_hidden_sizes=[16, 32], reassemble_factors=[2, 1], fusion_hidden_size=16)
    )  # fmt: skip
    with pytest.raises(CheckpointError) as error:
        load_backbone_weights(model, PACKAGED)
    assert str(error.value) == (
        "SnD weights for the backbone: this checkpoint is 48 wide with 2 layers; the config says ViT-S (384, 12): "
        "build the config from the checkpoint (e.g. SnDConfig.from_pretrained(DIR, out_indices=[...]))"
    )
    with pytest.raises(CheckpointError, match=r"^\S+model.safetensors: this checkpoint is 48 wide with 2 layers; the config says ViT-S \(384, 12\)"):
        SnDModel.from_pretrained(PACKAGED, config=SnDConfig.from_variant("small"))
