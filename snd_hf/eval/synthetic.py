"""The built-in benchmark: generated scenes (``snd_hf.data.synthetic``) as probing data.

Scenes are rendered from a held-out seed (never the training scenes' seed 0); the first three
quarters of the scenes train the probes and the rest test them, so test rooms are unseen. Every
frame brings RGB, exact z-depth, camera-frame normals and semantic classes; all frame pairs of
each test scene form the correspondence set.

Segmentation scores only real classes, as mmseg's ``reduce_zero_label`` does for ADE20K: the
generator's class 0 ("unlabelled") becomes the ignore index and the others shift down by one, so
the probe has one output per real class (``SEGMENTATION_CLASSES``). A real class absent from a
test split's ground truth is scored as mmseg scores it (``SegmentationMeter``): IoU 0 if the
probe predicts it anywhere, otherwise no IoU at all (NaN, left out of the mean). The rendered arrays are cached as one
``.pt`` file per parameter set.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from snd_hf.cameras import normalize_intrinsics
from snd_hf.data.correspondence import relative_rotation_deg
from snd_hf.data.synthetic import SEMANTIC_CLASSES, render_synthetic_scene
from snd_hf.eval.datasets import IGNORE_INDEX, DenseSample, EvalData, ViewPair
from snd_hf.files import atomic_write

__all__ = [
    "HELD_OUT_SEED",
    "SEGMENTATION_CLASSES",
    "SyntheticFrames",
    "SyntheticPairs",
    "render_scenes",
    "synthetic_eval_data",
]

HELD_OUT_SEED = 1000
SEGMENTATION_CLASSES: tuple[str, ...] = SEMANTIC_CLASSES[1:]  # the probe's classes: "unlabelled" is ignored


class SyntheticFrames(torch.utils.data.Dataset):
    """Frames of generated scenes as ``DenseSample``, labels reduced to ``SEGMENTATION_CLASSES``.

    Args:
        scenes: rendered scenes (``render_synthetic_scene`` arrays as tensors).
    """

    def __init__(self, scenes: list[dict[str, torch.Tensor]]):
        self.frames = [(scene, index) for scene in scenes for index in range(scene["image"].shape[0])]
        # The scene of every frame: probes keep whole rooms apart (validation, cross-validation).
        self.groups = torch.tensor([number for number, scene in enumerate(scenes) for _ in range(scene["image"].shape[0])])

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> DenseSample:
        scene, frame = self.frames[index]
        # mmseg's reduce_zero_label: class 0 ("unlabelled") → ignored, every real class c → c - 1.
        semantic = scene["semantic"][frame].long()
        labels = torch.where(semantic == 0, IGNORE_INDEX, semantic - 1).to(scene["semantic"].dtype)
        return DenseSample(
            image=scene["image"][frame].permute(2, 0, 1).float(),
            depth=scene["depth"][frame].float(),
            normals=scene["normals"][frame].permute(2, 0, 1).float(),
            labels=labels,
        )


class SyntheticPairs(torch.utils.data.Dataset):
    """Distinct frame pairs of each scene as ``ViewPair``: every pair, or a few at given frame gaps.

    Args:
        scenes: rendered scenes (:func:`render_scenes`).
        gaps: ``{gap: count}``: per scene, ``count`` distinct pairs ``(start, start + gap)`` with the
            starts spread evenly over the trajectory; None: every pair of frames.
    """

    def __init__(self, scenes: list[dict[str, torch.Tensor]], gaps: dict[int, int] | None = None):
        self.pairs = []
        for scene in scenes:
            frames = scene["image"].shape[0]
            if gaps is None:
                self.pairs += [(scene, first, second) for first, second in itertools.combinations(range(frames), 2)]
                continue
            for gap, count in gaps.items():
                starts = sorted({int(round(start)) for start in np.linspace(0, frames - 1 - gap, count)})
                if gap >= frames or len(starts) != count:
                    raise ValueError(f"scenes of {frames} frames have fewer than {count} distinct pairs {gap} frames apart.")
                self.pairs += [(scene, start, start + gap) for start in starts]

    def gap(self, index: int) -> int:
        """Frames between the two views of pair ``index``."""
        _, first, second = self.pairs[index]
        return second - first

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> ViewPair:
        scene, first, second = self.pairs[index]
        frames = [first, second]
        height, width = scene["depth"].shape[-2:]
        extrinsics = scene["extrinsics"][frames].float()
        intrinsics = normalize_intrinsics(scene["intrinsics"].float(), height, width).expand(2, 3, 3).clone()
        return ViewPair(
            images=scene["image"][frames].permute(0, 3, 1, 2).float(),
            depths=scene["depth"][frames].float(),
            extrinsics=extrinsics,
            intrinsics=intrinsics,
            rotation_deg=float(relative_rotation_deg(extrinsics[0], extrinsics[1])),
        )


def render_scenes(size: tuple[int, int, int, int], seed: int) -> list[dict[str, torch.Tensor]]:
    """Generated scenes in memory as tensors (``render_synthetic_scene`` arrays; float32 maps).

    Args:
        size: ``(num_scenes, num_frames, height, width)``.
        seed: scene seed.
    """
    num_scenes, num_frames, height, width = size
    scenes = []
    for index in tqdm(range(num_scenes), desc="rendering evaluation scenes", leave=False, disable=None):
        rendered = render_synthetic_scene(index, num_frames, height, width, seed)
        scenes.append({key: torch.from_numpy(np.asarray(value)) for key, value in rendered.items()})
        for key in ("image", "depth", "normals", "extrinsics", "intrinsics"):
            scenes[-1][key] = scenes[-1][key].float()
    return scenes


def _render_scenes(cache_dir: Path, size: tuple[int, int, int, int], seed: int) -> list[dict[str, torch.Tensor]]:
    num_scenes, num_frames, height, width = size
    path = cache_dir / f"scenes_{num_scenes}x{num_frames}_{height}x{width}_seed{seed}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    scenes = render_scenes(size, seed)
    atomic_write(path, lambda temporary: torch.save(scenes, temporary))
    return scenes


def synthetic_eval_data(cache_dir: str | Path, size: tuple[int, int, int, int], seed: int = HELD_OUT_SEED):
    """The generated benchmark as ``EvalData`` (every task).

    Args:
        cache_dir: where rendered scenes are cached.
        size: ``(num_scenes, num_frames, height, width)``; at least 2 scenes.
        seed: scene seed (held out from training by default).
    """
    if size[0] < 2:
        raise ValueError(f"the synthetic benchmark needs at least 2 scenes (train and test), got {size[0]}")
    scenes = _render_scenes(Path(cache_dir), size, seed)
    split = max(1, (3 * len(scenes)) // 4)
    train, test = SyntheticFrames(scenes[:split]), SyntheticFrames(scenes[split:])
    return EvalData(
        name=f"synthetic{size[0]}x{size[1]}",
        dense={"depth": (train, test), "normals": (train, test), "segmentation": (train, test)},
        pairs=SyntheticPairs(scenes[split:]),
        max_depth=10.0,
        num_classes=len(SEGMENTATION_CLASSES),
    )
