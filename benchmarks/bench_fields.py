"""Disentangled feature fields on generated glossy scenes: one-click 3D segmentation and highlights.

Run:  PYTHONPATH=. python benchmarks/bench_fields.py                       (3 scenes, embedded teacher)
      PYTHONPATH=. python benchmarks/bench_fields.py --scenes 1 --quick    (smoke run)
      PYTHONPATH=. python benchmarks/bench_fields.py --model path/to/snd   (another teacher)

Scenes: ``render_synthetic_scene(i, frames, 96, 128, seed, glossy=True)``; every 4th view (offset 2)
is held out, the others (24 of 32) are fitted. Prints per scene and overall (see
:mod:`snd_hf.fields.evaluate` for the protocol):

- mIoU of one-click 3D segmentation on the held-out views for (i) the disentangled field's
  ``f_ind``, (ii) a single view-independent feature field fitted the same way to the same Gaussians
  with the same budget, (iii) the teacher's 2D features of each view; all objects and glossy ones;
- highlight IoU of (i)'s ``f_dep`` against the generator's highlight masks;
- the fitting time of (i) (appearance + features) and of the whole evaluation per scene, in
  wall-clock and process CPU seconds (CPU seconds stay meaningful on a shared machine).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from figures import write_figures

from snd_hf.data.synthetic import render_synthetic_scene
from snd_hf.fields.evaluate import evaluate_scene
from snd_hf.fields.fit import FitConfig
from snd_hf.fields.scene import scene_from_arrays


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--first-scene", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="scene generator seed (100+ for development runs)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--model", default="snd_hf/assets/default", help="2D teacher")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="60 steps per stage, for a smoke run")
    parser.add_argument("--device", default="cpu", help="where the fields are fitted: cpu or cuda (gsplat)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = FitConfig(appearance_steps=60, feature_steps=60) if args.quick else FitConfig()
    print(f"threads {args.threads}, teacher {args.model}, {args.frames} views of 96x128 per scene, config {config}")

    results = []
    for index in range(args.first_scene, args.first_scene + args.scenes):
        scene = scene_from_arrays(render_synthetic_scene(index, args.frames, 96, 128, args.seed, glossy=True))
        wall, cpu = time.perf_counter(), time.process_time()
        scores = evaluate_scene(scene, args.model, config, device=args.device)
        scores.seconds["total wall"], scores.seconds["total cpu"] = time.perf_counter() - wall, time.process_time() - cpu
        results.append(scores)
        row = {name: mean(values.values()) for name, values in scores.iou.items()}
        fit = scores.seconds["appearance"] + scores.seconds["features (disentangled)"]
        fit_cpu = scores.seconds["appearance cpu"] + scores.seconds["features (disentangled) cpu"]
        print(
            f"scene {index}: objects {scores.objects} glossy {scores.glossy} | mIoU (i) {row['disentangled']:.3f} "
            f"(ii) {row['single']:.3f} (iii) {row['2d']:.3f} | highlight IoU {scores.highlight_iou:.3f} | "
            f"fit (i) {fit:.0f} s wall, {fit_cpu:.0f} s CPU | per object {scores.iou}",
            flush=True,
        )

    print("\n| method | mIoU, all objects | mIoU, glossy objects | highlight IoU |")
    print("| --- | --- | --- | --- |")
    labels = {"disentangled": "(i) disentangled field, f_ind", "single": "(ii) single feature field", "2d": "(iii) 2D features"}
    for name, label in labels.items():
        every = [value for scores in results for value in scores.iou[name].values()]
        glossy = [scores.iou[name][o] for scores in results for o in scores.glossy]
        highlight = f"{mean(s.highlight_iou for s in results):.3f}" if name == "disentangled" else "-"
        print(f"| {label} | {mean(every):.3f} ({len(every)} objects) | {mean(glossy):.3f} ({len(glossy)}) | {highlight} |")
    fits = [s.seconds["appearance"] + s.seconds["features (disentangled)"] for s in results]
    cpus = [s.seconds["appearance cpu"] + s.seconds["features (disentangled) cpu"] for s in results]
    print(f"\nfit of (i) per scene: {mean(fits):.0f} s wall (max {max(fits):.0f} s), {mean(cpus):.0f} s CPU; whole evaluation per scene "
          f"{mean(s.seconds['total wall'] for s in results):.0f} s wall, {mean(s.seconds['total cpu'] for s in results):.0f} s CPU")
    if args.json is not None:
        write_figures(args.json, {
            "device": args.device, "scenes": args.scenes, "frames": args.frames, "quick": args.quick,
            "miou": {name: mean(v for s in results for v in s.iou[name].values()) for name in labels},
            "highlight_iou": mean(s.highlight_iou for s in results),
            "fit_seconds": mean(fits), "evaluation_seconds": mean(s.seconds["total wall"] for s in results),
            "seconds": [s.seconds for s in results],
        })  # fmt: skip


if __name__ == "__main__":
    main()
