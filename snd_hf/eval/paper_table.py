"""The comparison table in the SnD paper's layout: models as rows; depth, normals, segmentation and
correspondence as columns, with the paper's reported ViT-S numbers beside ours where they exist.

Reported numbers are shown only where they describe the same thing: the paper's preset (`--preset
paper`), a dataset the paper reports on, a model named like a row of the paper (dinov2, fit3d, mef, snd)
and a ViT-S (384 wide). They are marked "reported" and are never mixed into the measured results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from snd_hf.eval.metrics import format_metric

__all__ = ["PAPER_COLUMNS", "REPORTED_VITS", "paper_table"]

# task -> (metric key in results.json, column title)
PAPER_COLUMNS: dict[str, tuple[str, str]] = {
    "depth": ("rmse", "depth RMSE (m) ↓"),
    "normals": ("rmse", "normals RMSE (°) ↓"),
    "segmentation": ("miou", "segmentation mIoU (%) ↑"),
    "correspondence": ("recall@10px", "correspondence recall@10px (%) ↑"),
}
# The SnD paper's ViT-S numbers (Splat and Distill, ICLR 2026, as transcribed in the notes on the original
# code this port follows), per `--data` kind, model row and task. The paper reports no FiT3D / MEF rows or correspondence recall there.
REPORTED_VITS: dict[str, dict[str, dict[str, float]]] = {
    "nyuv2": {"dinov2": {"depth": 0.5210, "normals": 30.99}, "snd": {"depth": 0.4912, "normals": 28.93}},
    "scannetpp": {"dinov2": {"depth": 0.3777}, "snd": {"depth": 0.3299}},
}


def paper_table(
    results: Mapping[str, Mapping[str, Mapping[str, float]]],
    data: str,
    preset: str,
    widths: Mapping[str, int],
) -> str:
    """The markdown table (module docstring).

    Args:
        results: task -> model name -> metrics, as in results.json.
        data: the `--data` spec (`synthetic` or `KIND=ROOT`).
        preset: the preset's name (reported numbers need exactly "paper").
        widths: model name -> hidden size (reported numbers are ViT-S, 384).
    Returns:
        the table, with a line saying whether and which reported numbers are shown.
    """
    tasks = [task for task in PAPER_COLUMNS if task in results]
    models = list(dict.fromkeys(name for task in tasks for name in results[task]))
    reported = REPORTED_VITS.get(data.partition("=")[0], {}) if preset == "paper" else {}
    lines = [
        "## Paper table",
        "",
        "| model | " + " | ".join(PAPER_COLUMNS[task][1] for task in tasks) + " |",
        "|---" * (len(tasks) + 1) + "|",
    ]
    shown = False
    for name in models:
        cells = []
        for task in tasks:
            value = results[task].get(name, {}).get(PAPER_COLUMNS[task][0], math.nan)
            cell = format_metric(task, PAPER_COLUMNS[task][0], value)  # in the column's unit
            paper = reported.get(name.lower(), {}).get(task) if widths.get(name) == 384 else None
            if paper is not None:
                cell += f" (reported {paper:g})"
                shown = True
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    if shown:
        lines.append("(reported: the SnD paper's ViT-S numbers, not measured here)")
    else:
        lines.append(
            "(no reported numbers: the paper's are shown only with --preset paper on nyuv2 or scannetpp, for ViT-S rows"
            " named dinov2 or snd)"
        )
    return "\n".join(lines) + "\n"
