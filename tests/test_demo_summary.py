"""`snd demo`'s summary of the benchmark: the embedded recipe's held-out rows, as docs/snd_effect.md states them."""

from __future__ import annotations

import json
from pathlib import Path

from snd_hf.demo import SND_EFFECT, snd_effect_summary

DOCS = Path(__file__).resolve().parents[1] / "docs" / "snd_effect.md"


def test_summary_prints_each_probe_for_each_seed_from_the_benchmark_rows():
    effect = json.loads(SND_EFFECT.read_text())
    lines = snd_effect_summary().splitlines()
    assert len(lines) == 6 and "32 rooms" in lines[0]
    seeds = effect["seeds"]
    segmentation = next(line for line in lines if "segmentation" in line)
    assert segmentation.endswith(" / ".join(f"{r['init']['seg_miou']:.3f} -> {r['snd']['seg_miou']:.3f}" for r in seeds.values()))
    assert "0.422 -> 0.520 / 0.422 -> 0.505" in lines[1]  # gap-4 R@10, seeds 0 and 1


def test_the_shipped_rows_are_the_tables_of_docs_snd_effect():
    docs = DOCS.read_text()
    for rows in json.loads(SND_EFFECT.read_text())["seeds"].values():
        snd = rows["snd"]
        assert f"| snd | {snd['gap4_R@10']:.3f} |" in docs
        assert f"{snd['depth_log_rmse']:.3f}" in docs and f"{snd['seg_miou']:.3f}" in docs
