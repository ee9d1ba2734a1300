"""MEF (qq456cvb/3DCorrEnhance) as a baseline: its Lightning checkpoint on a user-given DINOv2, checked
against MEF's own forward replayed on random weights of its exact layout (unmerged scale-1 LoRA on the
q and v slices of the last 4 blocks' qkv, then refine_conv on the final-norm patch map)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from snd_hf import SnDConfig, SnDModel
from snd_hf.baselines import MEFModel, load_baseline
from snd_hf.loading import CheckpointError, save_original_checkpoint
from baseline_weights import SIZES, TOLERANCE, mef_checkpoint, random_hub_state_dict  # tests/ is on sys.path


class UnmergedLoRAQKV(nn.Module):
    """MEF's `_LoRA_qkv` forward (utils/model.py): qkv(x), then B_q A_q x added to the q slice and
    B_v A_v x to the v slice, in place, scale 1."""

    def __init__(self, qkv: nn.Linear, w_a_q, w_b_q, w_a_v, w_b_v) -> None:
        super().__init__()
        self.qkv, self.width = qkv, qkv.in_features
        self.w_a_q, self.w_b_q, self.w_a_v, self.w_b_v = w_a_q, w_b_q, w_a_v, w_b_v

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(hidden_states)
        qkv[:, :, : self.width] += (hidden_states @ self.w_a_q.T) @ self.w_b_q.T
        qkv[:, :, -self.width :] += (hidden_states @ self.w_a_v.T) @ self.w_b_v.T
        return qkv


def mef_reference(base_path, checkpoint: dict, **config_overrides) -> nn.Module:
    """MEF's FinetuneDINO feature path: torch.hub DINOv2 (the base), LoRA unmerged, refine_conv on x_norm_patchtokens."""
    vit = SnDModel.from_original_checkpoint(base_path, **config_overrides)  # torch.hub numerics: tests/test_modeling_snd.py
    for k, layer in enumerate(vit.encoder.layer[-4:]):
        pairs = [checkpoint[f"w_{m}_{i:03d}"] for i in (2 * k, 2 * k + 1) for m in "ab"]
        layer.attention.qkv = UnmergedLoRAQKV(layer.attention.qkv, *pairs)
    width = vit.config.hidden_size
    refine = nn.Conv2d(width, width, 3, padding=1)
    refine.load_state_dict(checkpoint["state_dict"]["refine_conv"])

    def features(pixel_values: torch.Tensor) -> torch.Tensor:
        return refine(vit(pixel_values).feature_map)

    return features


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mef")
    torch.save(random_hub_state_dict(0), folder / "dinov2_vits14.pth")
    checkpoint = mef_checkpoint()
    torch.save(checkpoint, folder / "dinov2_small.ckpt")
    return folder / "dinov2_small.ckpt", folder / "dinov2_vits14.pth", checkpoint


def test_mef_matches_its_own_forward(files):
    ckpt, base, checkpoint = files
    model = load_baseline(ckpt, base=base)
    assert isinstance(model, MEFModel)
    assert (model.config.interpolate_offset, model.config.interpolate_antialias) == (0.1, False)  # torch.hub's
    reference = mef_reference(base, checkpoint)
    plain = SnDModel.from_original_checkpoint(base)
    torch.manual_seed(3)
    for height, width in SIZES:
        pixel_values = torch.randn(1, 3, height, width)
        with torch.no_grad():
            output = model(pixel_values)
            error = (output.feature_map - reference(pixel_values)).abs().max().item()
            moved = (output.feature_map - plain(pixel_values).feature_map).abs().max().item()
        assert error <= TOLERANCE, f"{height}x{width}: {error:.2e}"
        assert moved > 0.1  # the LoRA and refine_conv do change the features
        assert output.feature_map.shape == (1, 384, height // 14, width // 14) and output.pooler_output.shape == (1, 384)


def test_mef_checkpoint_alone_is_refused_with_the_fix(files):
    ckpt, _, _ = files
    with pytest.raises(CheckpointError, match=r"MEF checkpoint \(PyTorch Lightning .ckpt.*load_baseline\(path, base=") as error:
        SnDModel.from_original_checkpoint(ckpt)
    assert "\n" not in str(error.value)


def test_mef_on_a_base_of_another_width_is_refused(files, tmp_path):
    ckpt, _, _ = files
    torch.save(mef_checkpoint(width=768), tmp_path / "dinov2_base.ckpt")
    with pytest.raises(CheckpointError, match=r"MEF's LoRA of block 8 .*w_a: expected \(4, 384\), got \(4, 768\)"):
        load_baseline(tmp_path / "dinov2_base.ckpt", base=files[1])


def test_base_given_for_full_weights_is_refused(files):
    with pytest.raises(CheckpointError, match="not a MEF checkpoint.*without base="):
        load_baseline(files[1], base=files[1])


def test_snd_eval_names_the_mef_fix(files, tmp_path, capsys):
    """`snd eval --model mef=CKPT` without its base: one line naming MEF and the CKPT@BASE spec, exit 2."""
    from snd_hf.cli import console_main

    ckpt, _, _ = files
    arguments = ["eval", "depth", "--model", f"mef={ckpt}", "--data", "synthetic", "--synthetic-size", "2x2x42x56"]
    assert console_main([*arguments, "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert error.startswith("snd: error: ")
    assert "is a MEF checkpoint" in error and f"--model mef={ckpt}@DINOV2_WEIGHTS" in error


def test_mef_on_a_register_base(tmp_path):
    """MEF trained with `reg=True` sits on dinov2_vits14_reg: registers and their resize come from the base."""
    config = SnDConfig(hidden_size=32, num_hidden_layers=5, num_attention_heads=2, image_size=56, num_register_tokens=4)
    torch.manual_seed(0)
    save_original_checkpoint(SnDModel(config), tmp_path / "base.pth")
    (tmp_path / "base.pth.json").unlink()  # as torch.hub publishes it: no sidecar
    checkpoint = mef_checkpoint(width=32)
    torch.save(checkpoint, tmp_path / "mef.ckpt")
    model = load_baseline(tmp_path / "mef.ckpt", base=tmp_path / "base.pth", num_attention_heads=2)
    assert model.config.num_register_tokens == 4 and model.config.interpolate_antialias
    reference = mef_reference(tmp_path / "base.pth", checkpoint, num_attention_heads=2)
    pixel_values = torch.randn(2, 3, 98, 126)
    with torch.no_grad():
        assert (model(pixel_values).feature_map - reference(pixel_values)).abs().max() <= TOLERANCE
