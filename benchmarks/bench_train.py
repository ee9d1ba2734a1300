"""Benchmark the SnD training step of a config (default: the tiny synthetic one), on CPU or CUDA.

A cut-down training/train.py (as nanoGPT's bench.py): it builds the same student, teacher,
optimizer and splatting teacher and runs the same step functions (snd_hf.training.step) on the
same batches in three ways, in one run:

- the reference: the student's plain forward + backward (and optimizer step) on the target views;
- the SnD step with the teacher operator cached (snd_hf/splatting/teacher/operator.py; the operators of
  the benchmarked batches are built before the clock starts, as a long run reuses them);
- the SnD step with the direct teacher (lifting, rendering and mask operations every step);

The reference and the cached step alternate batch by batch (a shared machine's slow spells fall on
both). It prints both SnD steps stage by stage, each step as a ratio to the reference (and the
spread of the per-batch ratio), the cached operator's speed-up and peak memory.
The cached step runs only for configs that cache the operator (``cache_operator``; the paper's do
not: 300k steps over many scenes rarely repeat a view). ``--mixed_precision bf16`` runs the
teacher and the student under bf16 autocast, as train.py does through accelerate.

``--random-weights`` benchmarks a config at its own shapes without its data or checkpoints: a
random ViT of the config's ``size``, MVSplat with random weights (the real architecture) when the
config lifts with it, and generated scenes at the config's ``image_size``. It also projects the
wall time of the config's ``max_steps``; ``--json`` writes every figure. ``--quick`` shrinks the
images to 64x96 (a smoke run of the same code path).

With ``--trained DIR`` it also compares the multi-view correspondence recall of a trained student
(e.g. ``outputs/snd-synthetic-tiny``) against its initialisation on distinct pairs of held-out
generated rooms (ScanNet-pair protocol of snd_hf.eval.correspondence, recall at 5/10/20 px).

    python benchmarks/bench_train.py
    python benchmarks/bench_train.py --steps 10 --trained outputs/snd-synthetic-tiny
    python benchmarks/bench_train.py --config training/configs/synthetic_tiny.yaml --batch_size 1
    python benchmarks/bench_train.py --device cuda --random-weights --config scannetpp_vits14 --mixed_precision bf16 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from accelerate.utils import send_to_device
from figures import write_figures

import snd_hf.splatting.teacher.stages as stages_module
from snd_hf import SnDModel
from snd_hf.configuration_snd import SND_VARIANTS
from snd_hf.data.scenes import collate_scenes
from snd_hf.eval.correspondence import correspondence_errors, summarize_correspondence
from snd_hf.eval.synthetic import SyntheticPairs, render_scenes
from snd_hf.splatting import Lifter, MVSplatLifter
from snd_hf.splatting.teacher import OperatorCache
from snd_hf.training import ParameterEMA, TrainingConfig, make_ema_teacher
from snd_hf.training.builders import (
    build_dataset,
    build_optimizer,
    build_student,
    build_target_renderer,
    prepare_scenes,
)
from snd_hf.training.export import merged_backbone
from snd_hf.training.preflight import cpu_contention
from snd_hf.training.step import student_loss, teacher_targets


class StageTimer:
    """Wall time per named stage, accumulated over a step; nested stages are subtracted from their parent.

    On CUDA the device is synchronised at every stage edge, so that a stage's time holds its own
    kernels rather than those it merely queued.
    """

    def __init__(self, device: torch.device = torch.device("cpu")) -> None:
        self._current: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []
        self.device = device

    def _clock(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str):
        self._stack.append([0.0])
        start = self._clock()
        try:
            yield
        finally:
            elapsed = self._clock() - start
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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_memory_mib(device: torch.device) -> float:
    """The peak of the benchmark's memory: CUDA's allocator on a GPU, the process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def random_weights_config(config: TrainingConfig, scenes_dir: Path, quick: bool) -> tuple[TrainingConfig, Lifter | None]:
    """``config`` at its own shapes with nothing to download: see ``--random-weights``.

    Returns:
        the config to benchmark (random init of the config's ViT size, generated scenes at its
        image size in ``scenes_dir``) and the lifter to use: MVSplat with random weights where the
        config lifts with MVSplat, else None (the config's own).
    """
    if config.size is None:
        raise ValueError("--random-weights needs a config with a `size` (small or base), e.g. --config scannetpp_vits14")
    image_size = [64, 96] if quick else list(config.image_size)
    lifter = MVSplatLifter().requires_grad_(False).eval() if config.lifter == "mvsplat" else None
    overrides = {
        **SND_VARIANTS[config.size],
        "init": "random",
        "model_path": None,
        "dataset": "synthetic",
        "dataset_path": str(scenes_dir),
        "synthetic_scenes": 1,
        "synthetic_frames": config.context_gap + 2,  # two context pairs
        "synthetic_size": image_size,
        "image_size": image_size,
        # The lifter is passed in; the scenes' depth stands in for the checkpoint in the config checks.
        "lifter": "depth" if lifter is not None else config.lifter,
        "mvsplat_checkpoint": None,
    }
    return dataclasses.replace(config, **overrides), lifter


def benchmark_steps(
    config: TrainingConfig, steps: int, warmup: int, device: torch.device, lifter: Lifter | None = None
) -> dict:
    """Time the reference, cached (if ``config.cache_operator``) and direct steps; print and return the figures."""
    torch.manual_seed(config.seed)
    contention = cpu_contention(device.type)  # before this benchmark loads the CPU itself
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    root = prepare_scenes(config, progress=True)
    loader = torch.utils.data.DataLoader(
        build_dataset(config, root), batch_size=config.batch_size, shuffle=True, collate_fn=collate_scenes, drop_last=True
    )
    batches = [send_to_device(batch, device) for _, batch in zip(range(warmup + steps), itertools.cycle(loader))]
    student = build_student(config).to(device)
    teacher = make_ema_teacher(student)
    ema = ParameterEMA(teacher, student)
    target_renderer = build_target_renderer(config, student.backbone.config.patch_size, lifter).to(device)
    optimizer = build_optimizer(config, student)
    if config.mixed_precision == "fp16":
        raise ValueError("the benchmark runs --mixed_precision no or bf16 (fp16 would need loss scaling)")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.mixed_precision == "bf16")
    operators, build_seconds = None, float("nan")
    if config.cache_operator:
        # The operator of every benchmarked batch is built before the clock starts: a long run visits
        # each target view many times (the recipe: 640 distinct views, 16000 drawn), so its steps are cache hits.
        operators = OperatorCache(target_renderer, config.operator_cache_mb * 2**20)
        tick = time.perf_counter()
        for batch in batches:
            with autocast:
                operators(batch)
        synchronize(device)
        build_seconds = (time.perf_counter() - tick) / max(operators.misses, 1)  # per target view built

    timer = StageTimer(device)
    # Time the teacher's internals by wrapping the functions its stages call (restored at the end).
    patched = {name: getattr(stages_module, name) for name in ("upsample_features", "blend_with_mask", "render_features")}
    stage_of = {"upsample_features": "mask ops", "blend_with_mask": "mask ops", "render_features": "render"}
    for name, function in patched.items():
        setattr(stages_module, name, timer.wrap(stage_of[name], function))
    target_renderer.lifter.forward = timer.wrap("lifter", target_renderer.lifter.forward)
    # The shared step functions call these methods; instance attributes shadow them with timed ones.
    teacher.features = timer.wrap("teacher forward (ViT)", teacher.features)

    def snd_step(batch, cache) -> None:
        with timer.stage("teacher targets (other)"), autocast:
            targets = teacher_targets(teacher, target_renderer, batch, config, cache)
        with timer.stage("student forward + backward + loss"):
            with autocast:
                loss = student_loss(student, teacher, batch, targets, config).loss
            loss.backward()
        with timer.stage("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if config.teacher_mode == "ema":
            with timer.stage("EMA"):
                ema.update(config.ema_momentum)

    def plain_step(batch, cache) -> None:
        # The reference: the student's own forward + backward on the target views, and its update.
        with autocast:
            features, _ = student(batch["target"]["image"])
        features.float().square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reference, cached, direct = "student fwd + bwd + optimizer (reference)", "SnD step, cached teacher operator", "SnD step, direct teacher"
    modes = {reference: (plain_step, None), cached: (snd_step, operators), direct: (snd_step, None)}
    if operators is None:
        del modes[cached]
    times, stages, memory_before = defaultdict(list), defaultdict(lambda: defaultdict(list)), peak_memory_mib(device)

    def timed(mode: str, batch: dict, record: bool) -> None:
        step_function, cache = modes[mode]
        synchronize(device)
        start = time.perf_counter()
        step_function(batch, cache)
        synchronize(device)
        elapsed, step_stages = time.perf_counter() - start, timer.end_step()
        if record:
            times[mode].append(elapsed)
            for name, value in step_stages.items():
                stages[mode][name].append(value)

    try:
        # The reference and the cached step alternate batch by batch, so that a slow spell of a shared
        # machine falls on both and their ratio stays fair; the direct step (20-50x) runs after them.
        for index, batch in enumerate(batches):
            for mode in (reference, cached) if cached in modes else (reference,):
                timed(mode, batch, record=index >= warmup)
        for index, batch in enumerate(batches):
            timed(direct, batch, record=index >= warmup)
    finally:
        for name, function in patched.items():
            setattr(stages_module, name, function)
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    breakdowns = {mode: {name: statistics.median(values) for name, values in named.items()} for mode, named in stages.items()}
    trained_mode = cached if cached in modes else direct  # the step the config's run would take
    figures = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "image_size": list(config.image_size),
        "batch_size": config.batch_size,
        "num_targets": config.num_targets,
        "hidden_size": student.backbone.config.hidden_size,
        "num_hidden_layers": student.backbone.config.num_hidden_layers,
        "lifter": type(target_renderer.lifter).__name__,
        "mixed_precision": config.mixed_precision,
        "steps": steps,
        "warmup": warmup,
        "step_ms": {mode: 1000 * median for mode, median in medians.items()},
        "stages_ms": {mode: {name: 1000 * value for name, value in named.items()} for mode, named in breakdowns.items()},
        "peak_memory_mib": peak_memory_mib(device),
        "peak_memory_before_steps_mib": memory_before,
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS",
        "projected_steps": config.max_steps,
        "projected_hours": medians[trained_mode] * config.max_steps / 3600,
        "projected_from": trained_mode,
        "busy_cpu_warning": contention,
    }

    print(f"\nconfig: image {config.image_size}, batch {config.batch_size} x {config.num_targets} target views, ViT width {figures['hidden_size']} x "
          f"{figures['num_hidden_layers']} layers, loss {config.loss}, teacher {config.teacher_mode}, lifter {figures['lifter']}, "
          f"{device}, mixed precision {config.mixed_precision}, threads {torch.get_num_threads()}")
    if contention:
        print(f"warning: {contention} These timings are not reliable.")
    print("Stage medians are taken stage by stage: on a busy machine they need not add up to the step's median.")
    for mode in (m for m in (cached, direct) if m in modes):
        print(f"\n{mode}, by stage:\n{'stage':<36}{'median ms':>12}{'share':>8}")
        for name, median in sorted(breakdowns[mode].items(), key=lambda item: -item[1]):
            print(f"{name:<36}{1000 * median:>12.1f}{100 * median / medians[mode]:>7.1f}%")
    print(f"\n{'step':<44}{'median ms':>10}{'x reference':>13}")
    for mode, median in medians.items():
        print(f"{mode:<44}{1000 * median:>10.1f}{median / medians[reference]:>13.2f}")
    if cached in modes:
        round_ratios = [c / r for c, r in zip(times[cached], times[reference])]
        quartiles = statistics.quantiles(round_ratios, n=4) if len(round_ratios) > 1 else round_ratios * 3
        print(f"cached step / reference per interleaved batch ({len(times[cached])} batches): median {quartiles[1]:.2f}, "
              f"quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f}")
        print(f"cached operator speed-up over the direct teacher: {medians[direct] / medians[cached]:.1f}x "
              f"(building one target view's rows once: {1000 * build_seconds:.0f} ms)")
        figures["cached_over_reference_quartiles"] = quartiles
        figures["operator_build_ms_per_view"] = 1000 * build_seconds
    print(f"peak memory ({figures['peak_memory_kind']}): {figures['peak_memory_mib']:.0f} MiB (before the steps: {memory_before:.0f} MiB)")
    print(f"projected wall time of {config.max_steps} steps ({trained_mode}): {figures['projected_hours']:.1f} h")
    return figures


@torch.no_grad()
def correspondence_recall(model: torch.nn.Module, pairs: SyntheticPairs) -> dict[str, float]:
    """Recall of nearest-neighbour feature matches over distinct held-out view pairs (native size)."""
    errors, rotations = [], []
    for index in range(len(pairs)):
        pair = pairs[index]
        features = model.image_features(pair.images).feature_map  # [2, C, h, w]
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
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--random-weights", action="store_true", help="the config's shapes with random weights and generated scenes")
    parser.add_argument("--quick", action="store_true", help="with --random-weights: 64x96 images (a smoke run)")
    parser.add_argument("--json", type=Path, default=None, help="also write the step figures to this JSON file")
    parser.add_argument("--scenes-dir", type=Path, default=None, help="--random-weights: keep the generated scenes here for later runs")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    config = TrainingConfig.from_args(overrides)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as temporary:
        lifter = None
        if args.random_weights:
            config, lifter = random_weights_config(config, args.scenes_dir or Path(temporary), args.quick)
        config.validate()
        if args.steps > 0:
            figures = benchmark_steps(config, args.steps, args.warmup, device, lifter)
            if args.json is not None:
                write_figures(args.json, figures)
    if args.trained is not None:
        compare_recall(args.trained, args.pairs, args.rooms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
