"""Exports of a trained backbone: LoRA merged into native SnD directories and original .pth files."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModel

from snd_hf import SnDConfig, SnDModel
from snd_hf.training.export import merged_backbone, save_native, save_original


def _lora_backbone() -> torch.nn.Module:
    model = SnDModel(SnDConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56))
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["qkv", "proj", "projection"])
    )
    with torch.no_grad():  # non-zero adapters (lora_B starts at zero), so merging matters
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    return peft_model.eval()


def test_merged_native_and_original_exports_reproduce_the_adapted_model(tmp_path):
    backbone = _lora_backbone()
    pixels = torch.rand(2, 3, 42, 56)
    with torch.no_grad():
        expected = backbone(pixels).feature_map
        base = backbone.get_base_model()
        with backbone.disable_adapter():
            unadapted = base(pixels).feature_map
    assert not torch.allclose(expected, unadapted, atol=1e-4)  # the adapters change the features

    info = {"role": "student", "step": 3, "config": {"lora_r": 4}}
    (tmp_path / "native").mkdir()
    (tmp_path / "native" / "keep.txt").write_text("other files in the folder survive")
    save_native(backbone, tmp_path / "native", training_info=info, size=None, blending=True)
    loaded = SnDModel.from_pretrained(tmp_path / "native")
    auto = AutoModel.from_pretrained(tmp_path / "native")
    assert loaded.config.training_info == info and loaded.config.blending is True
    assert (tmp_path / "native" / "keep.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).feature_map, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(auto(pixels).feature_map, expected, atol=1e-5, rtol=1e-5)

    save_original(backbone, tmp_path / "student.pth")
    state = torch.load(tmp_path / "student.pth", weights_only=True)
    assert "blocks.0.attn.qkv.weight" in state and not any("lora" in key for key in state)
    original = SnDModel.from_original_checkpoint(tmp_path / "student.pth", num_attention_heads=2)
    with torch.no_grad():
        torch.testing.assert_close(original(pixels).feature_map, expected, atol=1e-5, rtol=1e-5)
    # merging works on a copy: the trained peft model keeps its adapters
    assert any("lora_A" in name for name, _ in backbone.named_parameters())
    assert isinstance(merged_backbone(backbone), SnDModel)


def test_a_trained_checkpoints_processor_feeds_the_size_it_trained_at(tmp_path):
    from PIL import Image
    from transformers import AutoImageProcessor

    model = SnDModel(SnDConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=56))
    save_native(model, tmp_path / "run", training_info={"step": 1}, image_size=(84, 112))
    processor = AutoImageProcessor.from_pretrained(tmp_path / "run")
    assert processor.size.shortest_edge == 84
    photo = Image.new("RGB", (640, 480))  # W x H: a 4:3 photo comes out at the 84x112 training grid
    assert list(processor(photo, return_tensors="pt").pixel_values.shape) == [1, 3, 84, 112]
    save_native(model, tmp_path / "default", training_info={"step": 1})
    assert AutoImageProcessor.from_pretrained(tmp_path / "default").size.shortest_edge == 448
