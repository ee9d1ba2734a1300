"""SnDModel: numerical parity with torch.hub DINOv2 fixtures, attention backends, round trips, input errors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

import snd_hf  # registers the Auto classes
from snd_hf import SnDBackbone, SnDConfig, SnDModel

TOLERANCE = 1e-4


def tiny_config(**kwargs) -> SnDConfig:
    """hidden 32, 2 heads, 3 layers, a 4x4 position grid (56 px)."""
    return SnDConfig(**{"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "image_size": 56, **kwargs})


def tiny_model(**kwargs) -> SnDModel:
    torch.manual_seed(0)
    model = SnDModel(tiny_config(**kwargs)).eval()
    with torch.no_grad():  # non-trivial layer scales and position embeddings
        for name, parameter in model.named_parameters():
            if "lambda1" in name or "position" in name:
                parameter.normal_(0.0, 0.5)
    return model


@pytest.fixture(scope="module", params=["tiny_a", "tiny_b"])
def reference(request, fixtures_dir):
    """(model loaded from the original checkpoint, expected tensors, input sizes) for one fixture."""
    folder = fixtures_dir / "dinov2"
    meta = json.loads((folder / "fixtures.json").read_text())[request.param]
    model = SnDModel.from_original_checkpoint(folder / f"{request.param}.pth", num_attention_heads=meta["arch"]["num_heads"])
    return model, load_file(folder / f"{request.param}_expected.safetensors"), meta


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return (actual - expected).abs().max().item()


def test_architecture_read_from_checkpoint(reference):
    model, _, meta = reference
    arch = meta["arch"]
    assert model.config.hidden_size == arch["embed_dim"]
    assert model.config.num_hidden_layers == arch["depth"]
    assert model.config.num_attention_heads == arch["num_heads"]
    assert model.config.mlp_ratio == arch["mlp_ratio"]
    assert model.config.image_size == arch["img_size"] and model.config.patch_size == arch["patch_size"]


def test_parity_with_torch_hub_dinov2(reference):
    """CLS, patch tokens, x_prenorm and every layer's normed map and CLS at every fixture size."""
    model, expected, meta = reference
    for size in meta["sizes"]:
        pixel_values = expected[f"{size}/pixel_values"]
        with torch.no_grad():
            output = model(pixel_values, output_hidden_states=True)
            layers = model.get_intermediate_layers(
                pixel_values, n=model.config.num_hidden_layers, reshape=True, return_class_token=True
            )
        errors = {
            "cls": max_error(output.pooler_output, expected[f"{size}/x_norm_clstoken"]),
            "patch": max_error(output.last_hidden_state[:, 1:], expected[f"{size}/x_norm_patchtokens"]),
            "prenorm": max_error(output.hidden_states[-1], expected[f"{size}/x_prenorm"]),
            "feature_map": max_error(output.feature_map, expected[f"{size}/layer{len(layers) - 1}_patch_map"]),
        }
        for index, (patch_map, cls_token) in enumerate(layers):
            errors[f"layer{index}_patch_map"] = max_error(patch_map, expected[f"{size}/layer{index}_patch_map"])
            errors[f"layer{index}_cls"] = max_error(cls_token, expected[f"{size}/layer{index}_cls"])
        worst = max(errors, key=errors.get)
        assert errors[worst] <= TOLERANCE, f"{size}: {worst} off by {errors[worst]:.2e}"


def test_sdpa_and_eager_agree(reference):
    model, expected, meta = reference
    eager = SnDModel(SnDConfig(**{**model.config.to_dict(), "attn_implementation": "eager"})).eval()
    eager.load_state_dict(model.state_dict())
    assert model.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    pixel_values = expected[f"{meta['sizes'][1]}/pixel_values"]
    with torch.no_grad():
        sdpa_output = model(pixel_values).last_hidden_state
        eager_output = eager(pixel_values, output_attentions=True)
    assert max_error(eager_output.last_hidden_state, sdpa_output) <= 1e-5
    attentions = eager_output.attentions
    assert len(attentions) == model.config.num_hidden_layers
    tokens = 1 + (126 // 14) * (182 // 14)
    assert attentions[0].shape == (2, model.config.num_attention_heads, tokens, tokens)
    torch.testing.assert_close(attentions[0].sum(-1), torch.ones(2, model.config.num_attention_heads, tokens))


@pytest.mark.parametrize("model_class", [SnDModel, SnDBackbone])
def test_output_attentions_under_sdpa_are_the_eager_probabilities(model_class):
    """transformers' convention: asked for attentions, a model returns them, whatever its attention kernel."""
    reference = tiny_model()
    sdpa = model_class(tiny_config(out_indices=[1, 3]) if model_class is SnDBackbone else tiny_config()).eval()
    sdpa.load_state_dict(reference.state_dict())
    eager = model_class(SnDConfig(**{**sdpa.config.to_dict(), "attn_implementation": "eager"})).eval()
    eager.load_state_dict(reference.state_dict())
    assert sdpa.config._attn_implementation == "sdpa"
    pixel_values = torch.randn(2, 3, 42, 56)
    with torch.no_grad():
        asked = sdpa(pixel_values, output_attentions=True, output_hidden_states=True)
        expected = eager(pixel_values, output_attentions=True, output_hidden_states=True)
        plain = sdpa(pixel_values, output_hidden_states=True)
    assert sdpa.config._attn_implementation == "sdpa"  # eager for that call only
    assert plain.attentions is None and len(asked.attentions) == 3
    tokens = 1 + 3 * 4
    for mine, theirs in zip(asked.attentions, expected.attentions):
        assert mine.shape == (2, 2, tokens, tokens)
        torch.testing.assert_close(mine, theirs, atol=0, rtol=0)
        torch.testing.assert_close(mine.sum(-1), torch.ones(2, 2, tokens))
    for mine, theirs in zip(asked.hidden_states, plain.hidden_states):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5)


def test_outputs_shapes_and_tuple_form():
    model = tiny_model()
    pixel_values = torch.randn(2, 3, 42, 70)
    with torch.no_grad():
        output = model(pixel_values, output_hidden_states=True)
        as_tuple = model(pixel_values, return_dict=False)
    assert output.last_hidden_state.shape == (2, 1 + 3 * 5, 32)
    assert output.pooler_output.shape == (2, 32)
    assert output.feature_map.shape == (2, 32, 3, 5)
    assert len(output.hidden_states) == 4
    # the map is the normed patch tokens laid out row-major
    torch.testing.assert_close(output.feature_map[:, :, 1, 2], output.last_hidden_state[:, 1 + 1 * 5 + 2])
    torch.testing.assert_close(output.pooler_output, output.last_hidden_state[:, 0])
    assert output.hidden_states is not None and model(pixel_values).hidden_states is None
    torch.testing.assert_close(as_tuple[0], output.last_hidden_state)


def test_mask_tokens_replace_masked_patches():
    model = tiny_model()
    with torch.no_grad():
        model.embeddings.mask_token.normal_()
    pixel_values = torch.randn(1, 3, 28, 28)
    masked = torch.tensor([[True, False, False, True]])
    embeddings = model.embeddings(pixel_values, bool_masked_pos=masked)
    plain = model.embeddings(pixel_values)
    position = model.embeddings.position_embeddings
    torch.testing.assert_close(embeddings[0, 1] - plain[0, 1], model.embeddings.mask_token[0] - model.embeddings.patch_embeddings(pixel_values)[0, 0])
    torch.testing.assert_close(embeddings[0, 2], plain[0, 2])
    assert position.shape == (1, 17, 32)


def test_gradient_checkpointing_gives_same_gradients():
    model = tiny_model()
    pixel_values = torch.randn(2, 3, 28, 42)
    model.train()
    model(pixel_values).feature_map.square().mean().backward()
    reference = {name: parameter.grad for name, parameter in model.named_parameters()}
    assert reference.pop("embeddings.mask_token") is None  # only used with bool_masked_pos
    model.zero_grad(set_to_none=True)
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.encoder.layer)
    model(pixel_values).feature_map.square().mean().backward()
    for name, gradient in reference.items():
        torch.testing.assert_close(model.get_parameter(name).grad, gradient, msg=name)


def test_bfloat16_close_to_float32():
    model = tiny_model()
    pixel_values = torch.randn(2, 3, 42, 42)
    with torch.no_grad():
        full = model(pixel_values).feature_map
        half = model.to(torch.bfloat16)(pixel_values).feature_map
    assert half.dtype == torch.bfloat16
    assert (half.float() - full).abs().max() < 0.1 * full.abs().max()


def test_save_pretrained_round_trips(tmp_path):
    model = tiny_model(size="small", blending=False, training_info={"step": 7})
    pixel_values = torch.randn(1, 3, 28, 56)
    model.save_pretrained(tmp_path)
    for loaded in (SnDModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert type(loaded) is SnDModel
        assert loaded.config.size == "small" and loaded.config.blending is False
        assert loaded.config.training_info == {"step": 7}
        with torch.no_grad():
            assert torch.equal(loaded.eval()(pixel_values).last_hidden_state, model(pixel_values).last_hidden_state)
    assert type(AutoConfig.from_pretrained(tmp_path)) is SnDConfig


def test_variant_configs():
    small, base = SnDConfig.from_variant("small", blending=True), SnDConfig.from_variant("base")
    assert (small.hidden_size, small.num_attention_heads, small.num_hidden_layers) == (384, 6, 12)
    assert (base.hidden_size, base.num_attention_heads, base.num_hidden_layers) == (768, 12, 12)
    assert small.grid_size == 37 and small.layerscale_value == 1.0 and not small.use_swiglu_ffn
    assert small.size == "small" and small.blending is True and base.blending is None
    with pytest.raises(ValueError, match="size must be one of"):
        SnDConfig.from_variant("large")


def test_init_weights():
    model = SnDModel(tiny_config(layerscale_value=1e-5, initializer_range=0.02))
    layer = model.encoder.layer[0]
    assert torch.all(layer.layer_scale1.lambda1 == 1e-5)
    assert torch.all(model.embeddings.mask_token == 0) and torch.all(layer.attention.qkv.bias == 0)
    assert 0.015 < layer.mlp.fc1.weight.std() < 0.025 and layer.mlp.fc1.weight.mean().abs() < 0.005
    assert torch.all(model.layernorm.weight == 1)


@pytest.mark.parametrize(
    ("pixel_values", "message"),
    [
        (torch.randn(3, 28, 28), r"shape \[B, 3, H, W\]"),
        (torch.randn(1, 4, 28, 28), "must have 3 channels"),
        (torch.randn(1, 28, 28, 3), "must have 3 channels"),
        (torch.randn(1, 3, 30, 28), "multiples of 14.*SnDImageProcessor"),
        (torch.randint(0, 255, (1, 3, 28, 28), dtype=torch.uint8), "float tensor"),
    ],
)
def test_bad_inputs_are_explained(pixel_values, message):
    with pytest.raises(ValueError, match=message):
        tiny_model()(pixel_values)


def test_intermediate_layers_select_by_index():
    model = tiny_model()
    pixel_values = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        last_two = model.get_intermediate_layers(pixel_values, n=2, norm=False)
        picked = model.get_intermediate_layers(pixel_values, n=[1, 2], norm=False)
        hidden = model(pixel_values, output_hidden_states=True).hidden_states
    for tokens, chosen, index in zip(last_two, picked, (1, 2)):
        assert torch.equal(tokens, chosen) and torch.equal(tokens, hidden[index + 1][:, 1:])
    with pytest.raises(ValueError, match="n must select layers"):
        model.get_intermediate_layers(pixel_values, n=[3])


def test_loading_and_saving_draw_no_weight_bars(tmp_path, capfd):
    # transformers draws "Loading weights" / "Writing model shards" bars on every load and save.
    model = SnDModel.from_pretrained(os.path.join(os.path.dirname(snd_hf.__file__), "assets", "default"))
    model.save_pretrained(tmp_path)
    SnDModel.from_pretrained(tmp_path)
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err + captured.out and "Writing model shards" not in captured.err + captured.out


def test_image_features_resize_normalise_and_encode():
    """The one images-to-features path: snap down to the patch grid (or resize to ``size``), ImageNet-normalise, encode."""
    torch.manual_seed(0)
    model = SnDModel(SnDConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=56, patch_size=8)).eval()
    images = torch.rand(2, 3, 45, 61)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        snapped = model.image_features(images)
        resized = torch.nn.functional.interpolate(images, size=(40, 56), mode="bilinear", align_corners=False)
        torch.testing.assert_close(snapped.feature_map, model((resized - mean) / std).feature_map)
        assert snapped.feature_map.shape == (2, 32, 5, 7)  # the config's patch size, not 14
        sized = model.image_features(images, size=(32, 48), antialias=True, output_hidden_states=True)
        resized = torch.nn.functional.interpolate(images, size=(32, 48), mode="bilinear", align_corners=False, antialias=True)
        expected = model((resized - mean) / std, output_hidden_states=True)
    torch.testing.assert_close(sized.feature_map, expected.feature_map)
    assert len(sized.hidden_states) == 2
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model.image_features(images[None])
    with pytest.raises(ValueError, match="smaller than one 8x8 patch"):
        model.image_features(torch.rand(1, 3, 7, 20))
