"""Benchmark the SnD training step of a config (default: the tiny synthetic one) on CPU.

A cut-down training/train.py (as nanoGPT's bench.py): it builds the same student, EMA teacher,
optimizer and splatting teacher and runs the same step functions (snd_hf.training.step), timing
them stage by stage (lifter, teacher forward, mask operations, rendering, student forward +
backward, heads, EMA) and reports steps/s and peak memory. With ``--trained DIR`` it also
compares the multi-view correspondence recall of a trained student (e.g.
``outputs/snd-synthetic-tiny``) against its initialisation on held-out generated scenes
(ScanNet-pair protocol of snd_hf.eval.correspondence, recall at 5/10/20 px).

    python benchmarks/bench_train.py
    python benchmarks/bench_train.py --steps 10 --trained outputs/snd-synthetic-tiny
    python benchmarks/bench_train.py --config training/configs/synthetic_tiny.yaml --batch_size 1
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

import snd_hf.splatting.teacher as teacher_module
from snd_hf import SnDModel
from snd_hf.data.scenes import SceneDataset, collate_scenes
from snd_hf.data.synthetic import ensure_synthetic_scenes
from snd_hf.training import TrainingConfig, ema_update, make_ema_teacher
from snd_hf.training.builders import (
    build_dataset,
    build_optimizer,
    build_splat_teacher,
    build_student,
    prepare_scenes,
)
from snd_hf.training.export import merged_backbone
from snd_hf.training.step import student_loss, teacher_logits


class StageTimer:
    """Wall time per named stage, accumulated over a step; nested stages are subtracted from their parent."""

    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = defaultdict(list)
        self._current: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []

    @contextlib.contextmanager
    def stage(self, name: str):
        self._stack.append([0.0])
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            children = self._stack.pop()[0]
            self._current[name] += elapsed - children
            if self._stack:
                self._stack[-1][0] += elapsed

    def wrap(self, name: str, function):
        def timed(*args, **kwargs):
            with self.stage(name):
                return function(*args, **kwargs)

        return timed

    def end_step(self) -> None:
        for name, value in self._current.items():
            self.totals[name].append(value)
        self._current.clear()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def benchmark_steps(config: TrainingConfig, steps: int, warmup: int) -> None:
    torch.manual_seed(config.seed)
    root = prepare_scenes(config, progress=True)
    loader = torch.utils.data.DataLoader(
        build_dataset(config, root), batch_size=config.batch_size, shuffle=True, collate_fn=collate_scenes, drop_last=True
    )
    student = build_student(config)
    teacher = make_ema_teacher(student)
    splat_teacher = build_splat_teacher(config)
    optimizer = build_optimizer(config, student)

    timer = StageTimer()
    # Time the teacher's internals by wrapping the functions it calls (restored at the end).
    patched = {name: getattr(teacher_module, name) for name in ("mask_aware_upsample", "blend_with_mask", "render_features")}
    stage_of = {"mask_aware_upsample": "mask ops", "blend_with_mask": "mask ops", "render_features": "render"}
    for name, function in patched.items():
        setattr(teacher_module, name, timer.wrap(stage_of[name], function))
    splat_teacher.lifter.forward = timer.wrap("lifter", splat_teacher.lifter.forward)
    # The shared step functions call these methods; instance attributes shadow them with timed ones.
    teacher.features = timer.wrap("teacher forward (ViT)", teacher.features)
    for module in (teacher, student):
        module.logits = timer.wrap("heads", module.logits)

    step_times, batches = [], iter(())
    rss_before = peak_rss_mib()
    try:
        for step in range(warmup + steps):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            start = time.perf_counter()
            with timer.stage("teacher splatting (other)"):
                logits, coverage = teacher_logits(teacher, splat_teacher, batch)
            with timer.stage("student forward + backward"):
                student_loss(student, batch, logits, coverage, config).backward()
            with timer.stage("optimizer"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            with timer.stage("EMA"):
                ema_update(teacher, student, config.ema_momentum)
            if step >= warmup:
                step_times.append(time.perf_counter() - start)
                timer.end_step()
            else:
                timer._current.clear()
    finally:
        for name, function in patched.items():
            setattr(teacher_module, name, function)

    total = statistics.median(step_times)
    print(f"\nconfig: image {config.image_size}, batch {config.batch_size}, ViT width {config.hidden_size} x "
          f"{config.num_hidden_layers} layers, {config.head_prototypes} prototypes, threads {torch.get_num_threads()}")
    print(f"{'stage':<30}{'median ms':>12}{'share':>8}")
    for name, values in sorted(timer.totals.items(), key=lambda item: -statistics.median(item[1])):
        median = statistics.median(values)
        print(f"{name:<30}{1000 * median:>12.1f}{100 * median / total:>7.1f}%")
    print(f"{'step (median)':<30}{1000 * total:>12.1f}")
    print(f"steps/s: {1.0 / total:.2f}   images/s: {config.batch_size / total:.2f}")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (before the steps: {rss_before:.0f} MiB)")


@torch.no_grad()
def correspondence_recall(model: torch.nn.Module, scenes: Path, pairs: int, gap: int) -> dict[str, float]:
    """Recall of nearest-neighbour feature matches between two views of held-out scenes (native size)."""
    from snd_hf.data.correspondence import relative_rotation_deg
    from snd_hf.eval.correspondence import (
        correspondence_errors,
        summarize_correspondence,
    )

    dataset = SceneDataset(scenes, num_context=2, context_gap=gap, image_size=None, seed=123)
    errors, rotations = [], []
    for index in range(pairs):
        sample = collate_scenes([dataset[index % len(dataset)]])["context"]
        features = teacher_module.patch_features(model, sample["image"])[0]  # [2, C, h, w]
        errors.append(
            correspondence_errors(features, sample["depth"][0], sample["extrinsics"][0], sample["intrinsics"][0])
        )
        rotations.append(float(relative_rotation_deg(sample["extrinsics"][0, 0], sample["extrinsics"][0, 1])))
    return summarize_correspondence(errors, rotations)


def compare_recall(trained_dir: Path, pairs: int) -> None:
    trained = SnDModel.from_pretrained(trained_dir).eval()
    info = trained.config.training_info or {}
    if "config" not in info:
        raise ValueError(f"{trained_dir} has no training_info: pass a directory written by training/train.py.")
    config = TrainingConfig.from_dict(info["config"])
    torch.manual_seed(config.seed)  # the initialisation of the run, rebuilt from its config and seed
    initial = merged_backbone(build_student(config).backbone)
    with tempfile.TemporaryDirectory() as tmp:
        held_out = ensure_synthetic_scenes(
            Path(tmp) / "held_out",
            num_scenes=4,
            num_frames=config.synthetic_frames,
            height=config.synthetic_size[0],
            width=config.synthetic_size[1],
            seed=config.seed + 1000,  # scenes never seen in training
            progress=False,
        )
        results = {
            name: correspondence_recall(model.eval(), held_out, pairs, config.context_gap)
            for name, model in (("initialisation", initial), ("trained", trained))
        }
    keys = [k for k in results["trained"] if k.startswith("recall@") and k.endswith("px")]
    print(f"\ncorrespondence on {pairs} held-out pairs (gap {config.context_gap}, {config.synthetic_size} pixels):")
    print(f"{'model':<16}" + "".join(f"{k:>14}" for k in keys))
    for name, summary in results.items():
        print(f"{name:<16}" + "".join(f"{summary[k]:>14.3f}" for k in keys))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--trained", type=Path, default=None, help="a trained output dir: compare correspondence recall")
    parser.add_argument("--pairs", type=int, default=16, help="held-out view pairs for the recall")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    config = TrainingConfig.from_args(overrides)
    config.validate()
    if args.steps > 0:
        benchmark_steps(config, args.steps, args.warmup)
    if args.trained is not None:
        compare_recall(args.trained, args.pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
