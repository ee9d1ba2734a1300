"""Pre-train the tiny ViT that stands in for DINOv2 offline, with a purely 2D dense objective.

    python training/pretrain_2d.py                                   # → snd_hf/assets/pretrained_2d/
    python training/pretrain_2d.py --out outputs/pretrained_2d --steps 100

SnD fine-tunes a 2D foundation model; offline, DINOv2 is out of reach, so the CPU recipe starts
from this one instead: a tiny ViT trained on single generated images with dense InfoNCE between
two augmented crops, positives from the known crop geometry (snd_hf/training/dense_contrastive.py).
It never sees depth, poses or a second view of a scene. Its output is the default starting point
of ``python training/train.py`` (``init: pretrained_2d``).

Images: frames of generated rooms (snd_hf/data/synthetic.py) of seed 1, a seed that neither the
SnD training scenes (seed 0) nor the held-out evaluation rooms (seeds 1000 and 2000) use, rendered
in memory at twice the crop size so that crops zoom in without blurring.

The run is deterministic in its seed and thread count, and runs on one thread unless ``--threads`` says
otherwise (more threads change the order of float sums, and so the weights slightly): ``python
training/pretrain_2d.py --out DIR`` rewrites snd_hf/assets/pretrained_2d's ``model.safetensors`` byte
for byte. Its ``config.json`` records the run's own command, ``--out`` and transformers version, and
settings the package gained since (``preprocessor_config.json``'s ``max_pixels``, the card
``README.md``), so those files differ by exactly that.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from snd_hf import SnDConfig, SnDImageProcessor, SnDModel
from snd_hf.data.synthetic import render_synthetic_scene
from snd_hf.run_folder import check_replaceable, replace_folder
from snd_hf.schema import read_json
from snd_hf.training.dense_contrastive import (
    ProjectionHead,
    dense_info_nce,
    positive_tokens,
    random_crops,
)

ASSET = Path(__file__).resolve().parents[1] / "snd_hf" / "assets" / "pretrained_2d"

# --- defaults (the packaged asset's run) ------------------------------------------------------------
SEED = 0
IMAGE_SEED = 1  # scenes of this generator seed supply the images
NUM_SCENES = 24
FRAMES_PER_SCENE = 12
SOURCE_SIZE = (126, 168)  # rendered (H, W), 1.5x the crops: crops zoom in without blurring much
CROP_SIZE = (84, 112)  # a 6x8 token grid, the SnD recipe's training size
HIDDEN_SIZE, NUM_LAYERS, NUM_HEADS = 48, 2, 3  # the tiny ViT
STEPS = 600
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.05
TEMPERATURE = 0.2
THREADS = 1  # the packaged asset's thread count: with it the run reproduces the asset byte for byte


def render_images(num_scenes: int, frames: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """Frames of generated rooms as one tensor in [0, 1]. [num_scenes · frames, 3, H, W]"""
    images = [
        torch.from_numpy(np.ascontiguousarray(render_synthetic_scene(index, frames, *size, seed)["image"]))
        for index in tqdm(range(num_scenes), desc="rendering images", leave=False, disable=None)
    ]
    return torch.cat(images).permute(0, 3, 1, 2).float().contiguous()


def pretrain(args: argparse.Namespace) -> SnDModel:
    torch.set_num_threads(args.threads)  # the weights depend on the thread count (module docstring)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    images = render_images(args.scenes, args.frames, SOURCE_SIZE, IMAGE_SEED)
    config = SnDConfig(
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        image_size=224,
    )
    model = SnDModel(config).train()
    head = ProjectionHead(config.hidden_size)
    parameters = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=WEIGHT_DECAY)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
    )
    grid = (CROP_SIZE[0] // config.patch_size, CROP_SIZE[1] // config.patch_size)

    progress = tqdm(range(args.steps), desc="pretrain 2d")
    for _ in progress:
        chosen = torch.randint(0, images.shape[0], (args.batch_size,), generator=generator)
        source = images[chosen]
        crops_a = random_crops(source, CROP_SIZE, generator)
        crops_b = random_crops(source, CROP_SIZE, generator, inside=crops_a.boxes)
        pairs = torch.stack([crops_a.images, crops_b.images], dim=1)  # [N, 2, 3, H, W]
        features = model.image_features(pairs.flatten(0, 1)).feature_map.unflatten(0, pairs.shape[:2])  # [N, 2, C, h, w]
        embeddings = head(features.flatten(3).transpose(2, 3))  # [N, 2, h·w, D]
        loss = 0.5 * (
            dense_info_nce(embeddings[:, 0], embeddings[:, 1], positive_tokens(crops_a, crops_b, grid), args.temperature)
            + dense_info_nce(embeddings[:, 1], embeddings[:, 0], positive_tokens(crops_b, crops_a, grid), args.temperature)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def _written_here(folder: Path) -> bool:
    """Whether ``folder`` is an output of this script from before run manifests (the packaged asset):
    its config's training_info says so and it holds nothing but the three files the script writes."""
    try:
        config = read_json(folder / "config.json")
        names = {path.name for path in folder.iterdir()}
    except (OSError, ValueError):
        return False
    written = {"config.json", "model.safetensors", "preprocessor_config.json"}
    return names <= written and isinstance(config, dict) and (config.get("training_info") or {}).get("role") == "pretrained_2d"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ASSET, help=f"output folder (default {ASSET})")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE)
    parser.add_argument("--learning_rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--temperature", type=float, default=TEMPERATURE)
    parser.add_argument("--scenes", type=int, default=NUM_SCENES, help="generated rooms supplying the images")
    parser.add_argument("--frames", type=int, default=FRAMES_PER_SCENE, help="images per room")
    parser.add_argument("--hidden_size", type=int, default=HIDDEN_SIZE)
    parser.add_argument("--layers", type=int, default=NUM_LAYERS)
    parser.add_argument("--heads", type=int, default=NUM_HEADS)
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads; the packaged weights: {THREADS} (default {THREADS})")
    parser.add_argument("--overwrite", action="store_true", help="replace an --out folder this script did not write")
    args = parser.parse_args(argv)
    overwrite = args.overwrite or _written_here(args.out)
    try:  # before any work; a folder holding anything the script did not write is never replaced silently
        check_replaceable(args.out, overwrite)
    except FileExistsError as error:
        parser.error(f"--out: {error}, or pass --overwrite")

    start = time.perf_counter()
    model = pretrain(args)
    model.config.training_info = {
        "role": "pretrained_2d",
        "objective": "dense InfoNCE between two crops of one image (snd_hf/training/dense_contrastive.py)",
        "command": "python training/pretrain_2d.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
    }
    def build(folder: Path) -> None:
        model.save_pretrained(folder)
        SnDImageProcessor(size={"shortest_edge": min(CROP_SIZE)}).save_pretrained(folder)  # the size it learnt at, as the trainer's

    replace_folder(args.out, build, "training/pretrain_2d.py", overwrite=overwrite)  # written whole aside, then swapped in
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
