"""Data pipeline speed: scene generation and SceneDataset throughput.

Run: ``python benchmarks/bench_data.py [--scenes 8 --frames 24 --size 96x128 --samples 64]``

Prints:
- generation time of the synthetic set, split into ray casting and file writing, and its ratio
  to the 60 s goal on 2 CPU cores;
- SceneDataset samples/s with 0 and 2 DataLoader workers, each as a ratio to a reference timed
  in the same run: opening and converting the same image and mask files with PIL + numpy alone
  (the floor any reader pays).

Wall-clock figures suffer on a shared machine; the CPU-time figures (this process only) show
the cost of the work itself.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader

from snd_hf.data.scenes import SceneDataset, collate_scenes
from snd_hf.data.synthetic import generate_scenes, render_synthetic_scene

GOAL_SECONDS = 60.0


def _reference_decode(dataset: SceneDataset, count: int) -> tuple[float, float]:
    """Wall and CPU seconds to read ``count`` samples' files with PIL + numpy only (image + mask per view)."""
    views_per_sample = dataset.options.num_context + dataset.options.num_targets
    scene_dirs = [Path(scene.location) for scene in dataset.scenes]
    start, cpu = time.perf_counter(), time.process_time()
    for index in range(count):
        scene_dir = scene_dirs[index % len(scene_dirs)]
        for view in range(views_per_sample):
            name = f"frame_{view:06d}.png"
            np.asarray(Image.open(scene_dir / "images" / name), dtype=np.float32) / 255.0
            np.asarray(Image.open(scene_dir / "instance_segmentation" / f"{name}.png")).astype(np.int64)
    return time.perf_counter() - start, time.process_time() - cpu


def _throughput(dataset: SceneDataset, workers: int, count: int) -> tuple[float, float]:
    """Samples per wall second and per CPU second of this process (meaningful with 0 workers), in
    batches of 4, timed from the first batch on so that worker start-up is left out."""
    loader = DataLoader(dataset, batch_size=4, collate_fn=collate_scenes, num_workers=workers, persistent_workers=workers > 0)
    batches = iter(loader)
    next(batches)
    start, cpu, seen = time.perf_counter(), time.process_time(), 0
    while seen < count:
        for batch in batches:
            seen += len(batch["scene"])
            if seen >= count:
                break
        batches = iter(loader)
    return seen / (time.perf_counter() - start), seen / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", default="96x128")
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    height, width = (int(part) for part in args.size.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        cpu = time.process_time()
        for index in range(args.scenes):
            render_synthetic_scene(index, args.frames, height, width, seed=0)
        render_cpu = time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        root = generate_scenes(Path(tmp) / "bench", args.scenes, args.frames, height, width, seed=0, progress=False)
        total, total_cpu = time.perf_counter() - start, time.process_time() - cpu
        print(f"generation {args.scenes}x{args.frames} at {height}x{width}: {total:.2f} s wall, {total_cpu:.2f} s CPU "
              f"(ray casting {render_cpu:.2f} s CPU, writing {max(total_cpu - render_cpu, 0.0):.2f} s CPU); "
              f"ratio of wall time to the {GOAL_SECONDS:.0f} s goal: {total / GOAL_SECONDS:.3f}")

        for fields, label in (((), "image+mask"), (("depth", "normals", "semantics"), "all maps")):
            dataset = SceneDataset(root, fields=fields, samples_per_scene=max(1, args.samples // args.scenes))
            wall, cpu = _reference_decode(dataset, args.samples)
            reference, reference_cpu = args.samples / wall, args.samples / cpu
            for workers in (0, 2):
                rate, rate_cpu = _throughput(dataset, workers, args.samples)
                line = (f"SceneDataset ({label}), {workers} workers: {rate:.1f} samples/s; ratio to PIL decode of "
                        f"image+mask ({reference:.1f} samples/s, 1 process): {rate / reference:.2f}")
                if workers == 0:
                    line += f"; per CPU second {rate_cpu:.1f} vs {reference_cpu:.1f}: {rate_cpu / reference_cpu:.2f}"
                print(line)


if __name__ == "__main__":
    main()
