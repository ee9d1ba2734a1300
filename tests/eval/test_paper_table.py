"""`snd eval all` with the paper's four kinds side by side (DINOv2 .pth, FiT3D timm layout, MEF .ckpt on its
base, SnD native folder), the per-probe position-embedding resize and the paper-layout table."""

from __future__ import annotations

import json
import math

import pytest
import torch

from baseline_weights import mef_checkpoint, timm_layout  # tests/ is on sys.path
from snd_hf import SnDConfig, SnDModel
from snd_hf.cli import main
from snd_hf.eval.paper_table import paper_table
from snd_hf.eval.protocol import position_resize
from snd_hf.loading import save_original_checkpoint


def tiny(seed: int, **kwargs) -> SnDModel:
    torch.manual_seed(seed)
    model = SnDModel(SnDConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=56, **kwargs)).eval()
    with torch.no_grad():
        model.embeddings.position_embeddings.normal_(0.0, 1.0)
    return model


def test_position_resize_switches_and_restores():
    """"timm" is the exact-size antialiased resize, "torchhub" the scale-factor one; the model's own comes back."""
    model = tiny(0)
    timm = SnDModel(SnDConfig(**{**model.config.to_dict(), "interpolate_offset": 0.0, "interpolate_antialias": True})).eval()
    timm.load_state_dict(model.state_dict())
    pixel_values = torch.randn(1, 3, 98, 126)
    with torch.no_grad():
        own = model(pixel_values).feature_map
        with position_resize(model, "timm"):
            assert torch.equal(model(pixel_values).feature_map, timm(pixel_values).feature_map)
        with position_resize(model, "torchhub"):
            assert torch.equal(model(pixel_values).feature_map, own)
        assert (own - timm(pixel_values).feature_map).abs().max() > 1e-3
        assert torch.equal(model(pixel_values).feature_map, own) and model.config.interpolate_offset == 0.1


def test_eval_all_four_kinds(tmp_path, capsys):
    dinov2 = tiny(0)
    save_original_checkpoint(dinov2, tmp_path / "dinov2.pth")
    (tmp_path / "dinov2.pth.json").unlink()  # a plain torch.hub file, as published
    torch.save(timm_layout(torch.load(tmp_path / "dinov2.pth", weights_only=True)), tmp_path / "fit3d.pth")
    torch.save(mef_checkpoint(width=32), tmp_path / "mef.ckpt")
    tiny(1).save_pretrained(tmp_path / "snd")
    arguments = ["eval", "all", "--data", "synthetic", "--out", str(tmp_path / "out"), "--steps", "5", "--synthetic-size", "3x3x42x56"]
    for spec in (f"dinov2={tmp_path / 'dinov2.pth'}", f"fit3d={tmp_path / 'fit3d.pth'}", f"mef={tmp_path / 'mef.ckpt'}@{tmp_path / 'dinov2.pth'}", f"snd={tmp_path / 'snd'}"):
        arguments += ["--model", spec]
    with pytest.warns(UserWarning, match="num_attention_heads=1 is a guess"):  # a 32-wide toy ViT
        assert main(arguments) == 0
    printed = capsys.readouterr().out
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert payload["position_resize"] == {"depth": "timm", "normals": "torchhub", "segmentation": "timm", "correspondence": "torchhub"}
    rows = [line for line in printed.split("## Paper table")[1].splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| dinov2", "| fit3d", "| mef", "| snd"]
    assert "depth RMSE" in rows[0] and "correspondence recall@10px" in rows[0] and "reported" not in "".join(rows)
    depth = payload["results"]["depth"]
    # FiT3D here holds DINOv2's weights in timm's layout: the same features under the same protocol.
    assert depth["fit3d"] == depth["dinov2"] and depth["mef"] != depth["dinov2"]


def test_reported_numbers_only_for_the_papers_preset_and_data():
    results = {"depth": {"dinov2": {"rmse": 0.6}, "snd": {"rmse": 0.5}, "mef": {"rmse": 0.55}}, "normals": {"snd": {"rmse": 30.0}}}
    widths = {"dinov2": 384, "snd": 384, "mef": 384}
    table = paper_table(results, "nyuv2=/data/nyu", "paper", widths)
    assert "| snd | 0.5000 (reported 0.4912) | 30.00 (reported 28.93) |" in table
    assert "| mef | 0.5500 | — |" in table and "not measured here" in table
    assert "reported 0" not in paper_table(results, "nyuv2=/data/nyu", "cpu", widths)
    assert "reported 0" not in paper_table(results, "nyuv2=/data/nyu", "paper", {**widths, "snd": 768, "dinov2": 768})


def test_resize_override_is_recorded(tmp_path):
    from snd_hf.eval.suite import PRESETS, _customized, evaluate

    tiny(0).save_pretrained(tmp_path / "model")
    preset = _customized(PRESETS["cpu"], 5, "3x3x42x56")
    payload = evaluate([f"m={tmp_path / 'model'}"], "synthetic", ("depth", "normals"), tmp_path / "out", preset, resize="torchhub")
    assert payload["resize"] == "torchhub" and payload["position_resize"] == {"depth": "torchhub", "normals": "torchhub"}
    with pytest.raises(FileExistsError, match="differs in resize"):
        evaluate([f"m={tmp_path / 'model'}"], "synthetic", ("depth", "normals"), tmp_path / "out", preset)
    with pytest.raises(ValueError, match="resize must be one of"):
        evaluate([f"m={tmp_path / 'model'}"], "synthetic", ("depth",), tmp_path / "other", preset, resize="bilinear")


def test_results_md_shows_one_labelled_unit_per_metric():
    # results.json keeps δ and correspondence recalls as fractions, normal recalls and segmentation in percent:
    # results.md shows every rate in percent and says each column's unit.
    from snd_hf.eval.suite import _markdown

    results = {
        "depth": {"snd": {"d1": 0.4221, "abs_rel": 0.25, "rmse": 0.5, "silog": 12.5}},
        "normals": {"snd": {"mean": 43.04, "recall_11.25": 12.5}},
        "segmentation": {"snd": {"miou": 26.71}},
        "correspondence": {"snd": {"recall@10px": 0.52, "recall@10px_0-15deg": math.nan}},
    }
    rows = [line for line in _markdown(results, "synthetic", "cpu").splitlines() if line.startswith("| ")]
    assert rows == [
        "| model | d1 (%) | abs_rel | rmse (m) | silog (×100) |",
        "| snd | 42.21 | 0.2500 | 0.5000 | 12.5000 |",
        "| model | mean (°) | recall_11.25 (%) |",
        "| snd | 43.04 | 12.50 |",
        "| model | miou (%) |",
        "| snd | 26.71 |",
        "| model | recall@10px (%) | recall@10px_0-15deg (%) |",
        "| snd | 52.00 | — |",
    ]
    table = paper_table(results, "synthetic", "cpu", {"snd": 48})
    assert "| model | depth RMSE (m) ↓ | normals RMSE (°) ↓ | segmentation mIoU (%) ↑ | correspondence recall@10px (%) ↑ |" in table
