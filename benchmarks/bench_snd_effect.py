"""Does SnD make features 3D-aware? Held-out gains over the initialisation and over geometry-free controls.

    python benchmarks/bench_snd_effect.py --seed 0 --out snd_effect_seed0.json
    python benchmarks/bench_snd_effect.py --seed 1 --out snd_effect_seed1.json
    python benchmarks/bench_snd_effect.py --held_out_seed 3000 --runs snd --learning_rate 1e-3   # a recipe sweep

From one initialisation (the packaged 2D-pretrained tiny ViT, ``init: pretrained_2d``) this trains,
with the same steps, batches, data order and teacher compute:

- ``snd``: the default recipe (training/configs/synthetic_tiny.yaml): the teacher's context-view
  tokens lifted with depth, splatted into the target view, distilled there;
- ``self_distillation``: the teacher's own tokens of the target view (no second view, no geometry);
- ``cross_view_copy``: the nearer context view's tokens at the same grid positions (a second view
  but no geometry);

and scores the initialisation, the three runs and two feature-free baselines on rooms no run ever
saw (generator seed 2000):

- correspondence (snd_hf.eval.correspondence, Probe3D's protocol: every valid pixel of view 0
  matched to its nearest neighbour in view 1 with the ratio test, the 1000 best matches scored
  against the true reprojection) on distinct view pairs, 4 per room at a gap of 4 frames and 2 at
  a gap of 8, recall at 5/10/20 px of the 84x112 images;
- a depth probe: ridge regression of each token's log depth on its features, fitted on the
  training rooms' frames, scored (RMSE of log depth) on the held-out rooms' frames;
- baselines without a network: ``position_only`` (Fourier features of the pixel position: a match
  is "the same place in the image") and ``oracle`` (Fourier features of the true world point).

Recipe choices are compared on validation rooms (``--held_out_seed 3000``), never on the held-out
rooms; any other ``--key value`` is a TrainingConfig override for every run.

Training scenes are generated with the run's seed (16 rooms of 12 frames); the seed also changes
the data order. Prints a markdown table and writes JSON (keys per model: ``gap4_R@5`` ...
``gap8_R@20``, ``depth_log_rmse``) with the timings and the number of distinct pairs.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from snd_hf.cameras import unproject_depth
from snd_hf.data.scannetpp import FolderScenes
from snd_hf.data.scenes import collate_scenes
from snd_hf.eval.correspondence import correspondence_errors
from snd_hf.eval.datasets import ViewPair
from snd_hf.eval.metrics import recall_at
from snd_hf.eval.synthetic import SyntheticPairs, render_scenes
from snd_hf.splatting.teacher import patch_features
from snd_hf.training import ParameterEMA, TrainingConfig, make_ema_teacher
from snd_hf.training.builders import (
    build_backbone,
    build_dataset,
    build_optimizer,
    build_scheduler,
    build_splat_teacher,
    build_student,
    prepare_scenes,
)
from snd_hf.training.export import merged_backbone
from snd_hf.training.operator_cache import OperatorCache
from snd_hf.training.step import student_loss, teacher_targets

HELD_OUT_SEED = 2000  # rooms that no training, pre-training or `snd eval` run uses
HELD_OUT_ROOMS = 8
PAIRS_PER_ROOM = {4: 4, 8: 2}  # gap (frames) -> distinct pairs per room: 8 x 6 = 48 pairs
THRESHOLDS = (5.0, 10.0, 20.0)
RUNS = ("snd", "self_distillation", "cross_view_copy")
TARGETS = {"snd": "splat", "self_distillation": "self_distillation", "cross_view_copy": "cross_view_copy"}
FOURIER_FREQUENCIES = 6


def held_out_pairs(
    config: TrainingConfig, seed: int = HELD_OUT_SEED
) -> tuple[list[dict[str, torch.Tensor]], list[tuple[int, ViewPair]]]:
    """The held-out rooms at the training image size and their distinct pairs, each with its gap in frames."""
    rooms = render_scenes((HELD_OUT_ROOMS, config.synthetic_frames, *config.image_size), seed)
    pairs = SyntheticPairs(rooms, gaps=PAIRS_PER_ROOM)
    return rooms, [(pairs.gap(index), pairs[index]) for index in range(len(pairs))]


def fourier_features(coordinates: torch.Tensor, frequencies: int = FOURIER_FREQUENCIES) -> torch.Tensor:
    """sin/cos of ``2^k π x`` for every coordinate: ``[..., D]`` → ``[..., 2 · D · frequencies]`` (all of one norm)."""
    scales = math.pi * 2.0 ** torch.arange(frequencies, dtype=coordinates.dtype)
    angles = (coordinates[..., None] * scales).flatten(-2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def baseline_maps(name: str, pair: ViewPair) -> torch.Tensor:
    """Feature maps of a network-free baseline at full resolution. [2, C, H, W]"""
    _, height, width = pair.depths.shape
    if name == "position_only":
        rows, columns = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
        coordinates = torch.stack([columns / width, rows / height], dim=-1).expand(2, height, width, 2)
    else:  # oracle: the true world point of every pixel (metres, over about a 10 m room)
        coordinates = unproject_depth(pair.depths, pair.extrinsics, pair.intrinsics) / 10.0
    return fourier_features(coordinates).permute(0, 3, 1, 2)


def correspondence_recalls(feature_maps, pairs: list[tuple[int, ViewPair]]) -> dict[str, float]:
    """Recall at 5/10/20 px per gap, averaged over pairs. ``feature_maps(pair) -> [2, C, h, w]``."""
    per_gap: dict[int, list[dict[str, float]]] = {}
    for gap, pair in pairs:
        errors = correspondence_errors(feature_maps(pair), pair.depths, pair.extrinsics, pair.intrinsics)
        per_gap.setdefault(gap, []).append(recall_at(errors, THRESHOLDS))
    results = {}
    for gap, recalls in sorted(per_gap.items()):
        for threshold in THRESHOLDS:
            key = f"recall@{threshold:g}px"
            results[f"gap{gap}_R@{threshold:g}"] = sum(r[key] for r in recalls) / len(recalls)
    return results


def token_log_depth(depth: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Log of each token's mean depth. [N, H, W] → [N, h·w]"""
    return F.interpolate(depth[:, None], size=grid, mode="area").flatten(1).log()


def depth_probe_rmse(train_features, train_depth, test_features, test_depth, ridge: float = 1e-3) -> float:
    """RMSE of log depth of a ridge regression per token, fitted on train, scored on test.

    Args:
        train_features, test_features: token features. [N, C, h, w]
        train_depth, test_depth: z-depth, all valid. [N, H, W]
    """
    grid = tuple(train_features.shape[-2:])

    def design(features):
        return features.flatten(2).transpose(1, 2).reshape(-1, features.shape[1]).double()

    x_train, x_test = design(train_features), design(test_features)
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    x_train = torch.cat([x_train, torch.ones(len(x_train), 1, dtype=x_train.dtype)], dim=1)
    x_test = torch.cat([x_test, torch.ones(len(x_test), 1, dtype=x_test.dtype)], dim=1)
    y_train = token_log_depth(train_depth, grid).reshape(-1).double()
    y_test = token_log_depth(test_depth, grid).reshape(-1).double()
    gram = x_train.T @ x_train + ridge * len(x_train) * torch.eye(x_train.shape[1], dtype=x_train.dtype)
    weights = torch.linalg.solve(gram, x_train.T @ y_train)
    return float(((x_test @ weights - y_test) ** 2).mean().sqrt())


@torch.no_grad()
def model_features(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Patch features of images [N, 3, H, W] → [N, C, h, w]."""
    return torch.cat([patch_features(model, images[i : i + batch_size, None])[:, 0] for i in range(0, len(images), batch_size)])


def train_run(config: TrainingConfig, dataset, splat_teacher, operators: OperatorCache) -> torch.nn.Module:
    """The training loop of training/train.py, cut down to one process: same builders, steps and data order."""
    torch.manual_seed(config.seed)
    student = build_student(config)
    teacher = make_ema_teacher(student)
    ema = ParameterEMA(teacher, student)
    optimizer = build_optimizer(config, student)
    scheduler = build_scheduler(config, optimizer)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate_scenes,
        generator=torch.Generator().manual_seed(config.seed),
    )
    step, epoch = 0, 0
    student.train()
    while step < config.max_steps:
        dataset.set_epoch(epoch)
        for batch in loader:
            targets = teacher_targets(teacher, splat_teacher, batch, config, operators)
            outputs = student_loss(student, teacher, batch, targets, config, step)
            optimizer.zero_grad(set_to_none=True)
            outputs.loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if config.teacher_mode == "ema" and step % config.ema_every == 0:
                ema.update(config.ema_momentum)
            if step >= config.max_steps:
                break
        epoch += 1
    return merged_backbone(student.backbone)


def training_frames(root: Path, config: TrainingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 3, H, W] and depth [N, H, W] of every frame of the training scenes (the depth probe's train split)."""
    source = FolderScenes(root)
    views = [
        source.load_view(scene, position, tuple(config.image_size), ("depth",))
        for scene in source.scenes
        for position in range(len(scene))
    ]
    return torch.stack([v["image"] for v in views]), torch.stack([v["depth"] for v in views])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="training scenes, data order and initial draws")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the recipe's)")
    parser.add_argument("--data_dir", type=Path, default=Path("outputs/bench_snd_effect"), help="generated training scenes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--held_out_seed", type=int, default=HELD_OUT_SEED, help="generator seed of the scored rooms (another seed: a validation set)"
    )
    parser.add_argument(
        "--runs", nargs="+", choices=RUNS, default=list(RUNS), help="which runs to train (recipe sweeps: --runs snd)"
    )
    # Any other --key value pairs are TrainingConfig overrides for every run.
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    timings, start = {}, time.perf_counter()
    overrides = ["--seed", str(args.seed), "--dataset_path", str(args.data_dir / f"scenes_seed{args.seed}")]
    if args.steps is not None:
        overrides += ["--max_steps", str(args.steps)]
    base = TrainingConfig.from_args(overrides + extra)
    base.validate()

    # Data: training scenes (the run's seed) and the held-out rooms.
    tick = time.perf_counter()
    root = prepare_scenes(base, progress=False)
    dataset = build_dataset(base, root)
    rooms, pairs = held_out_pairs(base, args.held_out_seed)
    timings["scenes"] = time.perf_counter() - tick

    # Training: the same operator cache serves all runs (it depends on the views only).
    splat_teacher = build_splat_teacher(base)
    operators = OperatorCache(splat_teacher, base.operator_cache_mb * 2**20)
    torch.manual_seed(base.seed)
    models = {"init": merged_backbone(build_backbone(base))}
    for name in args.runs:
        tick = time.perf_counter()
        config = TrainingConfig.from_dict({**base.to_dict(), "targets": TARGETS[name]})
        models[name] = train_run(config, dataset, splat_teacher, operators).eval()
        timings[f"train {name}"] = time.perf_counter() - tick
        print(f"{name}: {config.max_steps} steps in {timings[f'train {name}']:.0f} s "
              f"(operator cache: {len(operators)} target views, {operators.nbytes / 2**20:.1f} MB)", flush=True)

    # Scoring on the held-out rooms.
    tick = time.perf_counter()
    train_images, train_depth = training_frames(root, base)
    test_images = torch.cat([room["image"].permute(0, 3, 1, 2).float() for room in rooms])
    test_depth = torch.cat([room["depth"].float() for room in rooms])
    results = {}
    for name, model in models.items():
        model.eval()
        results[name] = correspondence_recalls(lambda pair, m=model: model_features(m, pair.images), pairs)
        results[name]["depth_log_rmse"] = depth_probe_rmse(
            model_features(model, train_images), train_depth, model_features(model, test_images), test_depth
        )
    for name in ("position_only", "oracle"):
        results[name] = correspondence_recalls(lambda pair, n=name: baseline_maps(n, pair), pairs)
    timings["scoring"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - start

    counts = {f"gap{gap}": sum(1 for g, _ in pairs if g == gap) for gap in PAIRS_PER_ROOM}
    report = {
        **results,
        "meta": {
            "seed": args.seed,
            "distinct_pairs": counts,
            "held_out_rooms": HELD_OUT_ROOMS,
            "held_out_seed": args.held_out_seed,
            "steps": base.max_steps,
            "image_size": base.image_size,
            "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "seconds": {key: round(value, 1) for key, value in timings.items()},
            "config": base.to_dict(),
        },
    }
    print_table(results, counts)
    print("\ntimings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")
    return 0


def print_table(results: dict[str, dict[str, float]], counts: dict[str, int]) -> None:
    columns = [f"gap{gap}_R@{t:g}" for gap in PAIRS_PER_ROOM for t in THRESHOLDS] + ["depth_log_rmse"]
    print(f"\nheld-out correspondence ({', '.join(f'{n} pairs at {k}' for k, n in counts.items())}) and depth probe:\n")
    print("| model | " + " | ".join(columns) + " |")
    print("| --- " * (len(columns) + 1) + "|")
    for name, values in results.items():
        cells = [f"{values[c]:.3f}" if c in values else "-" for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
