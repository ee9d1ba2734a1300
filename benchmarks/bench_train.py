"""Benchmark the SnD training step of a config (default: the tiny synthetic one) on CPU.

A cut-down training/train.py (as nanoGPT's bench.py): it builds the same student, teacher,
optimizer and splatting teacher and runs the same step functions (snd_hf.training.step) on the
same batches in three ways, in one run:

- the reference: the student's plain forward + backward (and optimizer step) on the target views;
- the SnD step with the teacher operator cached (snd_hf/splatting/operator.py; the operators of
  the benchmarked batches are built before the clock starts, as a long run reuses them);
- the SnD step with the direct teacher (lifting, rendering and mask operations every step);

The reference and the cached step alternate batch by batch (a shared machine's slow spells fall on
both). It prints both SnD steps stage by stage, each step as a ratio to the reference (and the
spread of the per-batch ratio), the cached operator's speed-up and peak memory.
With ``--trained DIR`` it also compares the multi-view correspondence recall of a trained student
(e.g. ``outputs/snd-synthetic-tiny``) against its initialisation on distinct pairs of held-out
generated rooms (ScanNet-pair protocol of snd_hf.eval.correspondence, recall at 5/10/20 px).

    python benchmarks/bench_train.py
    python benchmarks/bench_train.py --steps 10 --trained outputs/snd-synthetic-tiny
    python benchmarks/bench_train.py --config training/configs/synthetic_tiny.yaml --batch_size 1
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

import snd_hf.splatting.teacher as teacher_module
from snd_hf import SnDModel
from snd_hf.data.scenes import collate_scenes
from snd_hf.eval.correspondence import correspondence_errors, summarize_correspondence
from snd_hf.eval.synthetic import SyntheticPairs, render_scenes
from snd_hf.training import ParameterEMA, TrainingConfig, make_ema_teacher
from snd_hf.training.builders import (
    build_dataset,
    build_optimizer,
    build_splat_teacher,
    build_student,
    prepare_scenes,
)
from snd_hf.training.export import merged_backbone
from snd_hf.training.operator_cache import OperatorCache
from snd_hf.training.preflight import cpu_contention
from snd_hf.training.step import student_loss, teacher_targets


class StageTimer:
    """Wall time per named stage, accumulated over a step; nested stages are subtracted from their parent."""

    def __init__(self) -> None:
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

    def end_step(self) -> dict[str, float]:
        """The seconds per stage of the step just run; the next step starts from zero."""
        step, self._current = dict(self._current), defaultdict(float)
        return step


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def benchmark_steps(config: TrainingConfig, steps: int, warmup: int) -> None:
    torch.manual_seed(config.seed)
    contention = cpu_contention("cpu")  # before this benchmark loads the CPU itself
    root = prepare_scenes(config, progress=True)
    loader = torch.utils.data.DataLoader(
        build_dataset(config, root), batch_size=config.batch_size, shuffle=True, collate_fn=collate_scenes, drop_last=True
    )
    batches = [batch for _, batch in zip(range(warmup + steps), itertools.cycle(loader))]
    student = build_student(config)
    teacher = make_ema_teacher(student)
    ema = ParameterEMA(teacher, student)
    splat_teacher = build_splat_teacher(config)
    optimizer = build_optimizer(config, student)
    # The operator of every benchmarked batch is built before the clock starts: a long run visits
    # each target view many times (the recipe: 640 distinct views, 16000 drawn), so its steps are cache hits.
    operators = OperatorCache(splat_teacher, config.operator_cache_mb * 2**20)
    tick = time.perf_counter()
    for batch in batches:
        operators(batch)
    build_seconds = (time.perf_counter() - tick) / max(operators.misses, 1)  # per target view built

    timer = StageTimer()
    # Time the teacher's internals by wrapping the functions it calls (restored at the end).
    patched = {name: getattr(teacher_module, name) for name in ("upsample_features", "blend_with_mask", "render_features")}
    stage_of = {"upsample_features": "mask ops", "blend_with_mask": "mask ops", "render_features": "render"}
    for name, function in patched.items():
        setattr(teacher_module, name, timer.wrap(stage_of[name], function))
    splat_teacher.lifter.forward = timer.wrap("lifter", splat_teacher.lifter.forward)
    # The shared step functions call these methods; instance attributes shadow them with timed ones.
    teacher.features = timer.wrap("teacher forward (ViT)", teacher.features)

    def snd_step(batch, cache) -> None:
        with timer.stage("teacher targets (other)"):
            targets = teacher_targets(teacher, splat_teacher, batch, config, cache)
        with timer.stage("student forward + backward + loss"):
            student_loss(student, teacher, batch, targets, config).loss.backward()
        with timer.stage("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if config.teacher_mode == "ema":
            with timer.stage("EMA"):
                ema.update(config.ema_momentum)

    def plain_step(batch, cache) -> None:
        # The reference: the student's own forward + backward on the target views, and its update.
        features, _ = student(batch["target"]["image"])
        features.float().square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    modes = {
        "student fwd + bwd + optimizer (reference)": (plain_step, None),
        "SnD step, cached teacher operator": (snd_step, operators),
        "SnD step, direct teacher": (snd_step, None),
    }
    times, stages, rss_before = defaultdict(list), defaultdict(lambda: defaultdict(list)), peak_rss_mib()

    def timed(mode: str, batch: dict, record: bool) -> None:
        step_function, cache = modes[mode]
        start = time.perf_counter()
        step_function(batch, cache)
        elapsed, step_stages = time.perf_counter() - start, timer.end_step()
        if record:
            times[mode].append(elapsed)
            for name, value in step_stages.items():
                stages[mode][name].append(value)

    reference, cached, direct = modes
    try:
        # The reference and the cached step alternate batch by batch, so that a slow spell of a shared
        # machine falls on both and their ratio stays fair; the direct step (20-50x) runs after them.
        for index, batch in enumerate(batches):
            for mode in (reference, cached):
                timed(mode, batch, record=index >= warmup)
        for index, batch in enumerate(batches):
            timed(direct, batch, record=index >= warmup)
    finally:
        for name, function in patched.items():
            setattr(teacher_module, name, function)
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    breakdowns = {mode: {name: statistics.median(values) for name, values in named.items()} for mode, named in stages.items()}
    round_ratios = statistics.quantiles([c / r for c, r in zip(times[cached], times[reference])], n=4)

    print(f"\nconfig: image {config.image_size}, batch {config.batch_size} x {config.num_targets} target views, ViT width {student.backbone.config.hidden_size} x "
          f"{student.backbone.config.num_hidden_layers} layers, loss {config.loss}, teacher {config.teacher_mode}, "
          f"threads {torch.get_num_threads()}")
    if contention:
        print(f"warning: {contention} These timings are not reliable.")
    print("Stage medians are taken stage by stage: on a busy machine they need not add up to the step's median.")
    for mode in ("SnD step, cached teacher operator", "SnD step, direct teacher"):
        print(f"\n{mode}, by stage:\n{'stage':<36}{'median ms':>12}{'share':>8}")
        for name, median in sorted(breakdowns[mode].items(), key=lambda item: -item[1]):
            print(f"{name:<36}{1000 * median:>12.1f}{100 * median / medians[mode]:>7.1f}%")
    print(f"\n{'step':<44}{'median ms':>10}{'x reference':>13}")
    for mode, median in medians.items():
        print(f"{mode:<44}{1000 * median:>10.1f}{median / medians[reference]:>13.2f}")
    print(f"cached step / reference per interleaved batch ({len(times[cached])} batches): median {round_ratios[1]:.2f}, "
          f"quartiles {round_ratios[0]:.2f}-{round_ratios[2]:.2f}")
    print(f"cached operator speed-up over the direct teacher: {medians[direct] / medians[cached]:.1f}x "
          f"(building one target view's rows once: {1000 * build_seconds:.0f} ms)")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (before the steps: {rss_before:.0f} MiB)")


@torch.no_grad()
def correspondence_recall(model: torch.nn.Module, pairs: SyntheticPairs) -> dict[str, float]:
    """Recall of nearest-neighbour feature matches over distinct held-out view pairs (native size)."""
    errors, rotations = [], []
    for index in range(len(pairs)):
        pair = pairs[index]
        features = teacher_module.patch_features(model, pair.images[None])[0]  # [2, C, h, w]
        errors.append(correspondence_errors(features, pair.depths, pair.extrinsics, pair.intrinsics))
        rotations.append(pair.rotation_deg)
    return summarize_correspondence(errors, rotations)


def compare_recall(trained_dir: Path, pairs_per_room: int, rooms: int) -> None:
    trained = SnDModel.from_pretrained(trained_dir).eval()
    info = trained.config.training_info or {}
    if "config" not in info:
        raise ValueError(f"{trained_dir} has no training_info: pass a directory written by training/train.py.")
    config = TrainingConfig.from_dict(info["config"])
    torch.manual_seed(config.seed)  # the initialisation of the run, rebuilt from its config and seed
    initial = merged_backbone(build_student(config).backbone)
    frames, gap = config.synthetic_frames, config.context_gap
    scenes = render_scenes((rooms, frames, *config.synthetic_size), seed=config.seed + 1000)  # never trained on
    # Distinct pairs only: each (room, first frame) once.
    pairs = SyntheticPairs(scenes, gaps={gap: min(pairs_per_room, frames - gap)})
    results = {name: correspondence_recall(model.eval(), pairs) for name, model in (("initialisation", initial), ("trained", trained))}
    keys = [k for k in results["trained"] if k.startswith("recall@") and k.endswith("px")]
    print(f"\ncorrespondence on {len(pairs)} distinct held-out pairs ({rooms} rooms, gap {gap}, {config.synthetic_size} pixels):")
    print(f"{'model':<16}" + "".join(f"{k:>14}" for k in keys))
    for name, summary in results.items():
        print(f"{name:<16}" + "".join(f"{summary[k]:>14.3f}" for k in keys))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--trained", type=Path, default=None, help="a trained output dir: compare correspondence recall")
    parser.add_argument("--pairs", type=int, default=8, help="distinct held-out view pairs per room for the recall")
    parser.add_argument("--rooms", type=int, default=4, help="held-out rooms for the recall")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    config = TrainingConfig.from_args(overrides)
    config.validate()
    if args.steps > 0:
        benchmark_steps(config, args.steps, args.warmup)
    if args.trained is not None:
        compare_recall(args.trained, args.pairs, args.rooms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
