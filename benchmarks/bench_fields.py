"""Disentangled feature fields on generated glossy scenes: one-click 3D segmentation, segment everything, highlights.

Run:  PYTHONPATH=. python benchmarks/bench_fields.py --threads 1             (3 scenes, both teachers)
      PYTHONPATH=. python benchmarks/bench_fields.py --scenes 1 --quick    (smoke run)
      PYTHONPATH=. python benchmarks/bench_fields.py --model path/to/snd   (another teacher)
      PYTHONPATH=. python benchmarks/bench_fields.py --method threshold    (the per-Gaussian cosine rule)

Scenes: ``render_synthetic_scene(i, frames, 96, 128, seed, glossy=True)``; every 4th view (offset 2)
is held out, the others (24 of 32) are fitted. Two teachers: ``--model`` (the embedded checkpoint
by default) and the same model's features with the pixels' colour appended
(:class:`~snd_hf.fields.features.WithColour`, a teacher whose features see highlights). Prints,
per teacher (see :mod:`snd_hf.fields.evaluate` for the protocol):

- how much its features change under the generator's specular term (same views rendered with
  and without it, relative change on highlight pixels and elsewhere);
- mIoU of one-click 3D segmentation on the held-out views for (i) the disentangled field's
  ``f_ind`` (the ``--method`` rule, and the cosine-threshold rule beside it), (ii) a single
  view-independent feature field fitted the same way to the same Gaussians with the same budget,
  (iii) the teacher's 2D features of each view; all objects and glossy ones;
- segment-everything mIoU (Hungarian matching) and highlight IoU of (i)'s ``f_dep``;
- the fitting time of (i) (appearance + features) and of the whole evaluation per scene, in
  wall-clock and process CPU seconds (CPU seconds stay meaningful on a shared machine).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from figures import write_figures

from snd_hf.data.synthetic import render_synthetic_scene
from snd_hf.fields.evaluate import evaluate_scene, specular_sensitivity
from snd_hf.fields.features import WithColour, as_feature_source
from snd_hf.fields.fit import FitConfig
from snd_hf.fields.scene import scene_from_arrays
from snd_hf.fields.segment import METHODS


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def pooled(parts: list[dict[str, tuple[float, int]]], key: str) -> float:
    total, count = (sum(part[key][i] for part in parts) for i in (0, 1))
    return total / count if count else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--first-scene", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="scene generator seed (100+ for development runs)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--model", default="snd_hf/assets/default", help="2D teacher")
    parser.add_argument("--method", choices=METHODS, default="region", help="one-click selection rule of (i) and (ii)")
    parser.add_argument("--no-colour", action="store_true", help="skip the teacher with colour appended")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="60 steps per stage, for a smoke run")
    parser.add_argument("--device", default="cpu", help="where the fields are fitted: cpu or cuda (gsplat)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = FitConfig(appearance_steps=60, feature_steps=60) if args.quick else FitConfig()
    print(f"threads {args.threads}, teacher {args.model}, method {args.method}, {args.frames} views of 96x128 per scene, "
          f"config {config}")  # fmt: skip
    model = as_feature_source(args.model, config.short_side)
    teachers = {"embedded": model} if args.no_colour else {"embedded": model, "embedded + colour": WithColour(model)}

    results = {name: [] for name in teachers}
    sensitivity = {name: [] for name in teachers}
    for index in range(args.first_scene, args.first_scene + args.scenes):
        rendered = render_synthetic_scene(index, args.frames, 96, 128, args.seed, glossy=True)
        scene = scene_from_arrays(rendered)
        matte = scene_from_arrays(render_synthetic_scene(index, args.frames, 96, 128, args.seed, glossy=False)).images
        appearance = None
        for name, teacher in teachers.items():
            sensitivity[name].append(specular_sensitivity(teacher, scene.images, matte, scene.highlights))
            wall, cpu = time.perf_counter(), time.process_time()
            scores = evaluate_scene(scene, teacher, config, method=args.method, appearance=appearance, device=args.device)
            scores.seconds["total wall"], scores.seconds["total cpu"] = time.perf_counter() - wall, time.process_time() - cpu
            if appearance is None:
                appearance, first = scores.appearance, scores
            else:  # one stage 1 per scene: the first teacher's fitting time counts it
                scores.seconds["appearance"], scores.seconds["appearance cpu"] = first.seconds["appearance"], first.seconds["appearance cpu"]
            scores.appearance = None
            results[name].append(scores)
            row = {method: mean(values.values()) for method, values in scores.iou.items()}
            fit = scores.seconds["appearance"] + scores.seconds["features (disentangled)"]
            fit_cpu = scores.seconds["appearance cpu"] + scores.seconds["features (disentangled) cpu"]
            print(
                f"scene {index}, {name}: objects {scores.objects} glossy {scores.glossy} | mIoU (i) {row['disentangled']:.3f} "
                f"(i, threshold) {row['disentangled threshold']:.3f} (ii) {row['single']:.3f} (iii) {row['2d']:.3f} | "
                f"everything {mean(scores.everything_iou.values()):.3f} | highlight IoU {scores.highlight_iou:.3f} | "
                f"specular change {pooled(sensitivity[name][-1:], 'highlights'):.3f} on highlights, "
                f"{pooled(sensitivity[name][-1:], 'elsewhere'):.4f} elsewhere | fit (i) {fit:.0f} s wall, {fit_cpu:.0f} s CPU | per object {scores.iou} everything {scores.everything_iou}",
                flush=True,
            )

    labels = {
        "disentangled": f"(i) disentangled field, f_ind, {args.method}",
        "disentangled threshold": "(i) disentangled field, f_ind, threshold 0.6",
        "single": f"(ii) single feature field, {args.method}",
        "2d": "(iii) 2D features",
    }
    for name, scores_list in results.items():
        change = pooled(sensitivity[name], "highlights"), pooled(sensitivity[name], "elsewhere")
        print(f"\nteacher {name}: features change by {change[0]:.3f} (relative) on highlight pixels under the specular term, "
              f"{change[1]:.4f} elsewhere; (i) vs (ii) only means something where the 2D features are view-dependent")  # fmt: skip
        print("| method | mIoU, all objects | mIoU, glossy objects | segment everything | highlight IoU |")
        print("| --- | --- | --- | --- | --- |")
        for method, label in labels.items():
            every = [value for scores in scores_list for value in scores.iou[method].values()]
            glossy = [scores.iou[method][o] for scores in scores_list for o in scores.glossy]
            mine = method == "disentangled"
            everything = [value for scores in scores_list for value in scores.everything_iou.values()]
            highlight = f"{mean(s.highlight_iou for s in scores_list):.3f}" if mine else "-"
            segmented = f"{mean(everything):.3f}" if mine else "-"
            print(f"| {label} | {mean(every):.3f} ({len(every)} objects) | {mean(glossy):.3f} ({len(glossy)}) | {segmented} | {highlight} |")
    first = results["embedded"]
    fits = [s.seconds["appearance"] + s.seconds["features (disentangled)"] for s in first]
    cpus = [s.seconds["appearance cpu"] + s.seconds["features (disentangled) cpu"] for s in first]
    print(f"\nfit of (i) per scene (embedded teacher): {mean(fits):.0f} s wall (max {max(fits):.0f} s), {mean(cpus):.0f} s CPU "
          f"(per scene {np.round(cpus).astype(int).tolist()} s CPU); whole evaluation per scene and teacher "
          f"{mean(s.seconds['total wall'] for r in results.values() for s in r):.0f} s wall, "
          f"{mean(s.seconds['total cpu'] for r in results.values() for s in r):.0f} s CPU")  # fmt: skip
    if args.json is not None:
        write_figures(args.json, {
            "device": args.device, "scenes": args.scenes, "frames": args.frames, "quick": args.quick,
            "miou": {method: mean(v for s in first for v in s.iou[method].values()) for method in labels},
            "highlight_iou": mean(s.highlight_iou for s in first),
            "fit_seconds": mean(fits), "evaluation_seconds": mean(s.seconds["total wall"] for s in first),
            "seconds": [s.seconds for s in first],
        })  # fmt: skip


if __name__ == "__main__":
    main()
