"""Does SnD make features 3D-aware and keep their semantics? Four probes on held-out rooms, against controls.

    python benchmarks/bench_snd_effect.py --seed 0 --out snd_effect_seed0.json
    python benchmarks/bench_snd_effect.py --seed 1 --out snd_effect_seed1.json --processes 2   # two models at a time
    python benchmarks/bench_snd_effect.py --held_out_seed 3000 --runs snd snd_blended   # validation rooms: choices are made here
    python benchmarks/bench_snd_effect.py --models init=snd_hf/assets/pretrained_2d snd=snd_hf/assets/default   # score only

From one start (the packaged 2D-pretrained tiny ViT) every run trains through
``snd_hf.training.loop.train``, the loop of training/train.py, with the same steps, data and
data order (the ``--seed``):

- ``snd``: the default recipe (training/configs/synthetic_tiny.yaml, no blending);
- ``snd_blended``: the same with segment_mean_weight 0.5 (blending; the paper's with-blending variant);
- ``paper_objective``: the paper's objective (DINO head, LoRA, EMA teacher) scaled to the tiny
  model (training/configs/synthetic_tiny_paper.yaml); its row carries the collapse diagnostics
  of its last step;
- controls without geometry: ``self_distillation`` (the EMA teacher's own tokens of the target
  view), ``cross_view_copy`` (the nearer context view's tokens at the same grid positions), and
  ``frozen_teacher`` (the start's own tokens of the target view, a teacher that never moves: a
  control that cannot drift).

``init`` is the start. Every model is scored with snd_hf.eval's probes on rooms no run trained
on (``--held_out_seed``, default 2000; 32 rooms of 12 frames at the training size, 84x112):

- correspondence (``snd_hf.eval.correspondence``, Probe3D's protocol at full resolution):
  distinct view pairs, 1 per room at a gap of 4 frames and 1 at a gap of 8; recall at
  5/10/20 px;
- depth, surface normals and segmentation (``snd_hf.eval.tasks``: the linear heads, float64,
  with the stopping rule of ``snd_hf.eval.probe``) by 4-fold cross-validation over the rooms:
  every fold of 8 rooms is tested by heads trained on the other 24 (of which 6 are set aside to
  stop them); 6 frames per room; mean and spread (population std) over folds. The ground truth is
  pooled to 4x the token grid (24x32), where the normal head predicts; the depth head predicts on
  the token grid (upsample 1, a CPU choice: the protocol's 4x upsampling of 256 bin logits costs
  about ten times more) and is resized to the ground truth. Segmentation scores the 6 real classes
  (mmseg's reduce_zero_label; ``seg_miou`` is a fraction).

Recipe choices are made on validation rooms (``--held_out_seed 3000``), never on the held-out
rooms. Any other ``--key value`` is a TrainingConfig override for every run. ``--models
NAME=PATH ...`` scores the given models instead of training any. Prints a markdown
table and writes JSON: per model ``gap4_R@5`` ... ``gap8_R@20``, ``depth_log_rmse``, ``depth_d1``,
``normals_mean_deg``, ``seg_miou`` (fold means), their fold spreads under ``spread`` and their
per-fold values under ``folds``; ``meta`` holds counts, timings and the config.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import json
import multiprocessing
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from snd_hf.eval.correspondence import correspondence_errors
from snd_hf.eval.features import FeatureModel, extract_features, load_feature_model
from snd_hf.eval.metrics import recall_at
from snd_hf.eval.probe import ProbeConfig
from snd_hf.eval.synthetic import SEGMENTATION_CLASSES, SyntheticFrames, SyntheticPairs, render_scenes
from snd_hf.eval.tasks import DenseArrays, cross_validate, run_depth, run_normals, run_segmentation
from snd_hf.initial_weights import initial_backbone
from snd_hf.loading import weights_hash
from snd_hf.training import TrainingConfig
from snd_hf.training.builders import prepare_scenes
from snd_hf.training.loop import train

HELD_OUT_SEED = 2000  # rooms that no training, pre-training or `snd eval` run uses
HELD_OUT_ROOMS = 32
PAIRS_PER_ROOM = {4: 1, 8: 1}  # gap (frames) -> distinct pairs per room: 32 + 32 pairs
PROBE_FRAMES = slice(0, None, 2)  # 6 of each room's 12 frames for the dense probes
FOLDS = 4
PROBE_GRID = 4  # ground truth at 4x the token grid
PROBE = ProbeConfig(steps=1500, batch_size=16, lr=2e-2, weight_decay=0.0, patience=3, eval_every=50)
THRESHOLDS = (5.0, 10.0, 20.0)
# Each run: TrainingConfig arguments on top of the recipe (synthetic_tiny.yaml).
RUNS: dict[str, list[str]] = {
    "snd": [],
    "snd_blended": ["--segment_mean_weight", "0.5"],
    "paper_objective": ["--config", "synthetic_tiny_paper"],
    "self_distillation": ["--targets", "self_distillation"],
    "cross_view_copy": ["--targets", "cross_view_copy"],
    "frozen_teacher": ["--targets", "self_distillation", "--teacher_mode", "frozen"],
}
COLUMNS = ("gap4_R@10", "gap4_R@20", "gap8_R@10", "depth_log_rmse", "normals_mean_deg", "seg_miou")


def common_arguments(seed: int, work_dir: Path, steps: int | None, overrides: list[str]) -> list[str]:
    """TrainingConfig arguments shared by every run: seed, scenes, steps, the command line's overrides."""
    common = ["--seed", str(seed), "--dataset_path", str(work_dir / f"scenes_seed{seed}"), "--overwrite_output_dir"]
    common += ["--save_steps", str(10**9)]  # one checkpoint, at the end: the runs are not resumed
    return common + (["--max_steps", str(steps)] if steps is not None else []) + overrides


def run_config(name: str, common: list[str]) -> TrainingConfig:
    """The TrainingConfig of run ``name`` with ``common`` (seed, data, steps, overrides) on top."""
    config = TrainingConfig.from_args(RUNS[name] + common)
    config.validate()
    return config


def held_out(image_size: tuple[int, int], seed: int, rooms: int = HELD_OUT_ROOMS) -> tuple[DenseArrays, SyntheticPairs]:
    """The held-out rooms: dense probe arrays (every other frame, ground truth at 4x the token grid) and the correspondence pairs."""
    scenes = render_scenes((rooms, 12, *image_size), seed)
    frames = SyntheticFrames([{key: value[PROBE_FRAMES] if value.dim() > 2 else value for key, value in room.items()} for room in scenes])
    samples = [frames[index] for index in range(len(frames))]
    grid = (PROBE_GRID * image_size[0] // 14, PROBE_GRID * image_size[1] // 14)
    depth = F.interpolate(torch.stack([s.depth for s in samples])[:, None], size=grid, mode="area")[:, 0]
    normals = F.normalize(F.interpolate(torch.stack([s.normals for s in samples]), size=grid, mode="area"), dim=1)
    labels = F.interpolate(torch.stack([s.labels for s in samples])[:, None].float(), size=grid, mode="nearest")[:, 0].long()
    arrays = DenseArrays(torch.stack([s.image for s in samples]), depth, normals, labels, f"held-out{seed}", frames.groups)
    return arrays, SyntheticPairs(scenes, gaps=PAIRS_PER_ROOM)


def correspondence(feature_model, pairs: SyntheticPairs, size: tuple[int, int]) -> dict[str, float]:
    """Recall at 5/10/20 px per gap, averaged over pairs."""
    per_gap: dict[int, list[dict[str, float]]] = {}
    for index in range(len(pairs)):
        pair = pairs[index]
        features = extract_features(feature_model, pair.images, size).patch
        errors = correspondence_errors(features, pair.depths, pair.extrinsics, pair.intrinsics)
        per_gap.setdefault(pairs.gap(index), []).append(recall_at(errors, THRESHOLDS))
    return {
        f"gap{gap}_R@{threshold:g}": sum(r[f"recall@{threshold:g}px"] for r in recalls) / len(recalls)
        for gap, recalls in sorted(per_gap.items())
        for threshold in THRESHOLDS
    }


def dense_probes(feature_model, arrays: DenseArrays, size: tuple[int, int]) -> dict[str, dict]:
    """Depth, normals and segmentation by cross-validation over rooms: per metric mean, std and folds."""
    features = extract_features(feature_model, arrays.images, size)
    tasks = {
        # Deviation: the depth head predicts on the token grid (docs/deviations.md, 41).
        "depth": functools.partial(run_depth, config=PROBE, min_depth=1e-3, max_depth=10.0, upsample=1),
        "normals": functools.partial(run_normals, config=PROBE),
        "segmentation": functools.partial(run_segmentation, config=PROBE, num_classes=len(SEGMENTATION_CLASSES)),
    }
    return {task: cross_validate(run, arrays, features, FOLDS) for task, run in tasks.items()}


def scores(correspondence_recalls: dict[str, float], dense: dict[str, dict]) -> dict:
    """One model's row: the JSON keys (fold means), their spreads and per-fold values."""
    picks = {
        "depth_log_rmse": ("depth", "rmse_log", 1.0),
        "depth_d1": ("depth", "d1", 1.0),
        "normals_mean_deg": ("normals", "mean", 1.0),
        "seg_miou": ("segmentation", "miou", 0.01),  # a fraction, like the recalls
    }
    row = dict(correspondence_recalls)
    row["spread"], row["folds"] = {}, {}
    for key, (task, metric, scale) in picks.items():
        row[key] = dense[task][metric]["mean"] * scale
        row["spread"][key] = dense[task][metric]["std"] * scale
        row["folds"][key] = [value * scale for value in dense[task][metric]["folds"]]
    row["probe_steps"] = {task: dense[task]["probe_steps"]["folds"] for task in dense}
    return row


def last_diagnostics(output_dir: Path) -> dict[str, float]:
    """The collapse diagnostics (snd_hf.training.diagnostics) of a run's last logged step."""
    last = json.loads((output_dir / "losses.jsonl").read_text().splitlines()[-1])
    return {key: value for key, value in last.items() if key not in ("step", "loss", "lr")}


@dataclasses.dataclass
class Job:
    """One model of the benchmark: a run to train (``spec`` None), the runs' start (``spec`` "init") or a model to load."""

    name: str
    config: TrainingConfig | None
    spec: str | None
    size: tuple[int, int]
    held_out_seed: int
    rooms: int
    threads: int


@functools.lru_cache(maxsize=1)
def held_out_cached(size: tuple[int, int], seed: int, rooms: int) -> tuple[DenseArrays, SyntheticPairs]:
    return held_out(size, seed, rooms)


def run_job(job: Job) -> tuple[str, dict, dict[str, float], dict]:
    """Train (when the job has a config) and score one model: ``(name, row, timings, samples scored)``."""
    torch.set_num_threads(job.threads)
    timings, tick = {}, time.perf_counter()
    if job.spec is None:
        output_dir = train(job.config)
        timings[f"train {job.name}"] = time.perf_counter() - tick
        print(f"{job.name}: {job.config.max_steps} steps in {timings[f'train {job.name}']:.0f} s", flush=True)
        feature_model = load_feature_model(f"{job.name}={output_dir}")
    elif job.spec == "init":  # the runs' start, rebuilt from their config
        model = initial_backbone(job.config).eval()
        feature_model = FeatureModel(job.name, "init", model, weights_hash(model))
    else:
        feature_model = load_feature_model(job.spec)
    tick = time.perf_counter()
    arrays, pairs = held_out_cached(job.size, job.held_out_seed, job.rooms)
    row = scores(correspondence(feature_model, pairs, job.size), dense_probes(feature_model, arrays, job.size))
    if job.spec is None:
        row["diagnostics"] = last_diagnostics(Path(job.config.output_dir))
    timings[f"score {job.name}"] = time.perf_counter() - tick
    print(f"scored {job.name} ({timings[f'score {job.name}']:.0f} s)", flush=True)
    gaps = [pairs.gap(index) for index in range(len(pairs))]
    samples = {"distinct_pairs": {f"gap{gap}": gaps.count(gap) for gap in PAIRS_PER_ROOM}, "probe_images": len(arrays)}
    return job.name, row, timings, samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="training scenes, data order and initial draws")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the recipe's)")
    parser.add_argument("--work_dir", type=Path, default=Path("outputs/bench_snd_effect"), help="generated scenes and the runs' folders")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the probe heads give equal scores at any count; training and the float32 features may differ in their last bits)")
    parser.add_argument(
        "--held_out_seed", type=int, default=HELD_OUT_SEED, help="generator seed of the scored rooms (3000: validation rooms)"
    )
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="which runs to train")
    parser.add_argument("--processes", type=int, default=1, help="models trained and scored at once, one process each (each with --threads)")
    parser.add_argument("--rooms", type=int, default=HELD_OUT_ROOMS, help="held-out rooms (a multiple of the 4 folds)")
    parser.add_argument("--models", nargs="+", default=None, metavar="NAME=PATH", help="score these models, train nothing")
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)  # extra: TrainingConfig overrides
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    common = common_arguments(args.seed, args.work_dir, args.steps, extra)
    runs = [] if args.models else args.runs
    configs = {name: run_config(name, common + ["--output_dir", str(args.work_dir / f"seed{args.seed}" / name)]) for name in runs}
    first = next(iter(configs.values()), None) or run_config("snd", common)
    size = tuple(first.image_size)
    place = dict(size=size, held_out_seed=args.held_out_seed, rooms=args.rooms, threads=args.threads)
    if args.models:
        jobs = [Job(spec.partition("=")[0], None, spec, **place) for spec in args.models]
    else:
        jobs = [Job("init", first, "init", **place)] + [Job(name, config, None, **place) for name, config in configs.items()]

    # Every run trains through the loop of training/train.py; each model is scored on the held-out rooms.
    if args.processes == 1:
        done = [run_job(job) for job in jobs]
    else:
        # The runs are independent: one process each, longest first (init only scores). Their
        # shared scenes are generated here first, so no two processes generate them at once.
        for config in configs.values():
            prepare_scenes(config)
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.processes, mp_context=context) as pool:
            done = list(pool.map(run_job, jobs[1:] + jobs[:1]))
        done = done[-1:] + done[:-1]
    results = {name: row for name, row, _, _ in done}
    timings = {key: value for _, _, seconds, _ in done for key, value in seconds.items()}
    timings["total"] = time.perf_counter() - start
    samples = done[0][3]  # every job scored the same held-out rooms
    counts = samples["distinct_pairs"]
    report = {
        **results,
        "meta": {
            "seed": args.seed,
            "held_out_seed": args.held_out_seed,
            "held_out_rooms": args.rooms,
            "processes": args.processes,
            "distinct_pairs": counts,
            "probe_images": samples["probe_images"],
            "folds": FOLDS,
            "probe": dataclasses.asdict(PROBE),
            "steps": {name: config.max_steps for name, config in configs.items()},
            "threads": args.threads,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "seconds": {key: round(value, 1) for key, value in timings.items()},
            "config": {name: config.to_dict() for name, config in configs.items()},
        },
    }
    print(markdown_table(results, counts, args.held_out_seed))
    print("\ntimings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")
    return 0


def markdown_table(results: dict[str, dict], counts: dict[str, int], held_out_seed: int) -> str:
    """Fold means ± spreads (dense probes) and recalls (correspondence), one row per model."""
    lines = [
        f"\nheld-out rooms (seed {held_out_seed}): correspondence on {', '.join(f'{n} pairs at {k}' for k, n in counts.items())};"
        f" dense probes: mean ± std over {FOLDS} folds of rooms\n",
        "| model | " + " | ".join(COLUMNS) + " |",
        "| --- " * (len(COLUMNS) + 1) + "|",
    ]
    for name, row in results.items():
        cells = [f"{row[c]:.3f}" + (f" ± {row['spread'][c]:.3f}" if c in row["spread"] else "") for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
