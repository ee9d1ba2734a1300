"""Multi-view scene dataset: samples context/target views of posed scenes for SnD training.

One item is one draw of views from one scene, in the snd-hf scene batch layout without the
batch dimension::

    sample["context"] / sample["target"]: dict with
        image [V, 3, H, W] in [0, 1], extrinsics [V, 4, 4] (camera-to-world, OpenCV),
        intrinsics [V, 3, 3] (normalised), near [V], far [V], mask [V, H, W] int64,
        and, when the scene stores them, depth [V, H, W] (metres, 0 = invalid),
        normals [V, 3, H, W] (camera frame), semantics [V, H, W] int64.
    sample["scene"]: the scene id.
    sample["index"]: {"context": [Vc], "target": [Vt]} positions in the scene's frame list
        (sorted by frame number, ``is_bad`` frames removed).

:func:`collate_scenes` stacks samples into the batch layout (B first; ``scene`` becomes a list).

View sampling follows SnD's bounded sampler: the context views span ``context_gap`` frames
(``num_context`` views spread evenly over that span) and targets lie between them
(``target_mode="between"``, inclusive, as in the original) or outside them within one gap
(``target_mode="novel"``). The draw depends only on ``(seed, epoch, scene id, draw number)``: call
:meth:`SceneDataset.set_epoch` each epoch and a resumed run sees the same data order.

Example::

    from torch.utils.data import DataLoader
    from snd_hf.data.scenes import SceneDataset, collate_scenes
    from snd_hf.data.synthetic import ensure_synthetic_scenes

    root = ensure_synthetic_scenes("data/synthetic")
    dataset = SceneDataset(root, image_size=(96, 128))
    loader = DataLoader(dataset, batch_size=4, shuffle=True, collate_fn=collate_scenes)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from snd_hf.data.frames import FrameReadError
from snd_hf.data.scannetpp import OPTIONAL_FIELDS, FolderScenes, SceneRecord, SkipLog


class SceneSource(Protocol):
    """What :class:`SceneDataset` reads from: a list of scenes and a per-frame loader."""

    scenes: list[SceneRecord]
    skipped: SkipLog

    def load_view(
        self, scene: SceneRecord, position: int, size: tuple[int, int] | None, fields: tuple[str, ...]
    ) -> dict[str, torch.Tensor]: ...


def sample_views(
    num_frames: int,
    rng: np.random.Generator,
    *,
    num_context: int = 2,
    context_gap: tuple[int, int] = (8, 8),
    num_targets: int = 1,
    target_mode: Literal["between", "novel"] = "between",
) -> tuple[list[int], list[int]]:
    """Draw context and target frame positions of one scene.

    Args:
        num_frames: frames in the scene; must be at least :func:`min_frames`.
        rng: the generator to draw from.
        context_gap: inclusive (min, max) distance between the first and last context view.

    Returns:
        the context positions (increasing) and the target positions (sorted).
    """
    needed = min_frames(context_gap, target_mode)
    if num_frames < needed:
        raise ValueError(f"`num_frames` must be >= {needed} for this sampler, got {num_frames}.")
    # Deviation: the original always used the minimum gap (a min/max bug); we draw it in [min, max].
    largest = min(context_gap[1], num_frames - 1 - (target_mode == "novel"))
    gap = int(rng.integers(context_gap[0], largest + 1))
    left = int(rng.integers(0, num_frames - gap))
    right = left + gap
    context = [left + round(k * gap / (num_context - 1)) for k in range(num_context)]
    if target_mode == "between":
        candidates = np.arange(left, right + 1)
    else:
        candidates = np.concatenate([np.arange(max(left - gap, 0), left), np.arange(right + 1, min(right + gap, num_frames - 1) + 1)])
    targets = rng.choice(candidates, size=num_targets, replace=len(candidates) < num_targets)
    return context, sorted(int(t) for t in targets)


def min_frames(context_gap: tuple[int, int], target_mode: str) -> int:
    """Fewest frames a scene needs for the sampler."""
    return context_gap[0] + 1 + (target_mode == "novel")


@dataclass(frozen=True)
class SamplingOptions:
    """How views are drawn and loaded; the keyword arguments of :class:`SceneDataset` (see there).

    ``context_gap`` is normalised to an inclusive ``(min, max)`` pair.
    """

    num_context: int = 2
    context_gap: int | tuple[int, int] = 8
    num_targets: int = 1
    target_mode: Literal["between", "novel"] = "between"
    image_size: tuple[int, int] | None = None
    skip_bad: bool = True
    seed: int = 0
    near: float = 0.1
    far: float = 20.0
    samples_per_scene: int = 1
    fields: tuple[str, ...] = OPTIONAL_FIELDS

    def __post_init__(self) -> None:
        gap = self.context_gap
        gap = (gap, gap) if isinstance(gap, int) else tuple(int(g) for g in gap)
        if len(gap) != 2 or gap[0] < 1 or gap[1] < gap[0]:
            raise ValueError(f"`context_gap` must be an int >= 1 or a (min, max) range with 1 <= min <= max, got {self.context_gap!r}.")
        object.__setattr__(self, "context_gap", gap)
        if self.num_context < 2 or self.num_context - 1 > gap[0]:
            raise ValueError(f"`num_context` must be in [2, min gap + 1 = {gap[0] + 1}], got {self.num_context}.")
        if self.num_targets < 1:
            raise ValueError(f"`num_targets` must be >= 1, got {self.num_targets}.")
        if self.target_mode not in ("between", "novel"):
            raise ValueError(f"`target_mode` must be 'between' or 'novel', got {self.target_mode!r}.")
        if self.samples_per_scene < 1:
            raise ValueError(f"`samples_per_scene` must be >= 1, got {self.samples_per_scene}.")
        unknown = set(self.fields) - set(OPTIONAL_FIELDS)
        if unknown:
            raise ValueError(f"`fields` must be a subset of {list(OPTIONAL_FIELDS)}, got {sorted(unknown)}.")
        object.__setattr__(self, "fields", tuple(self.fields))
        if self.image_size is not None:
            if len(self.image_size) != 2 or min(self.image_size) < 1:
                raise ValueError(f"`image_size` must be (H, W) with positive sizes or None, got {self.image_size!r}.")
            object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))
        # Deviation: near/far default to 0.1/20 (metric indoor scenes); the original used 1/100.
        if not 0 < self.near < self.far:
            raise ValueError(f"`near` and `far` must satisfy 0 < near < far, got near={self.near}, far={self.far}.")

    @property
    def min_frames(self) -> int:
        """Fewest frames a scene needs for the sampler."""
        return min_frames(self.context_gap, self.target_mode)

    def rng(self, epoch: int, scene_id: str, draw: int) -> np.random.Generator:
        """The random stream of draw ``draw`` of a scene in an epoch: independent of the scene's
        position, so folder, ``datasets`` and streamed readers draw alike."""
        return np.random.default_rng([self.seed, epoch, zlib.crc32(scene_id.encode()), draw])

    def draw(self, num_frames: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """Context and target positions of one sample (:func:`sample_views`)."""
        return sample_views(
            num_frames,
            rng,
            num_context=self.num_context,
            context_gap=self.context_gap,
            num_targets=self.num_targets,
            target_mode=self.target_mode,
        )

    def sample(self, source: SceneSource, scene: SceneRecord, rng: np.random.Generator) -> dict:
        """Draw views of ``scene`` and load them into one sample."""
        context, targets = self.draw(len(scene), rng)
        return build_sample(
            source, scene, context, targets, image_size=self.image_size, fields=self.fields, near=self.near, far=self.far
        )


class SceneDataset(Dataset):
    """Context/target views of posed multi-view scenes.

    Args:
        root: a ScanNet++-layout folder (``scenes/<id>/...``), a folder written by
            ``datasets.Dataset.save_to_disk`` or holding parquet files of
            :mod:`snd_hf.data.hf`'s schema, a ``datasets.Dataset`` of that schema, or any
            :class:`SceneSource`.
        num_context: context views per sample (SnD uses 2).
        context_gap: frames between the first and last context view: an int or an inclusive
            (min, max) range.
        num_targets: target views per sample.
        target_mode: ``"between"`` draws targets within the context span, ``"novel"`` outside it.
        image_size: output (H, W); None keeps the native size (all scenes must then share it to
            be batched). Intrinsics are normalised, so resizing leaves them unchanged.
        skip_bad: drop frames flagged ``is_bad``.
        seed: sampling seed.
        near, far: clipping distances given to every view, in scene units.
        samples_per_scene: items per scene per epoch.
        fields: optional maps to load when a scene has them (any of depth, normals, semantics).
        on_error: ``"skip"`` counts unusable scenes, frames and samples in ``skipped`` (with a
            warning the first time for each reason) and moves on; ``"raise"`` raises. A skipped
            sample is replaced by a draw from the next scene. DataLoader workers each count the
            skips of their own samples.
    """

    def __init__(
        self,
        root: str | Path | SceneSource,
        *,
        num_context: int = 2,
        context_gap: int | tuple[int, int] = 8,
        num_targets: int = 1,
        target_mode: Literal["between", "novel"] = "between",
        image_size: tuple[int, int] | None = None,
        skip_bad: bool = True,
        seed: int = 0,
        near: float = 0.1,
        far: float = 20.0,
        samples_per_scene: int = 1,
        fields: tuple[str, ...] = OPTIONAL_FIELDS,
        on_error: Literal["skip", "raise"] = "skip",
    ):
        options = SamplingOptions(
            num_context, context_gap, num_targets, target_mode, image_size, skip_bad, seed, near, far, samples_per_scene, fields
        )
        if on_error not in ("skip", "raise"):
            raise ValueError(f"`on_error` must be 'skip' or 'raise', got {on_error!r}.")
        self.options, self.on_error, self.epoch = options, on_error, 0
        self.source = _open_source(root, skip_bad=skip_bad, on_error=on_error)
        self.skipped = self.source.skipped

        self.scenes: list[SceneRecord] = []
        for scene in self.source.scenes:
            if len(scene) >= options.min_frames:
                self.scenes.append(scene)
                continue
            message = f"{scene.location or scene.scene_id}: {len(scene)} usable frames, the sampler needs {options.min_frames}"
            if on_error == "raise":
                raise ValueError(message)
            self.skipped.add("too few frames", message)
        if not self.scenes:
            raise ValueError(f"no usable scene in {root!r} (skipped: {dict(self.skipped.counts)}).")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose view draws ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.scenes) * self.options.samples_per_scene

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        # Deviation: views are positions in the frame list, so numbering gaps never trigger the
        # original's endless retry; a sample with an unreadable file is replaced by the same draw
        # of the next scene, at most one full lap.
        scene_index, draw = divmod(index, self.options.samples_per_scene)
        for attempt in range(len(self.scenes)):
            scene = self.scenes[(scene_index + attempt) % len(self.scenes)]
            try:
                return self.options.sample(self.source, scene, self.options.rng(self.epoch, scene.scene_id, draw))
            except FrameReadError as error:
                if self.on_error == "raise":
                    raise
                self.skipped.add(error.kind, error.path)
        raise RuntimeError(f"every scene failed to load a sample (skipped: {dict(self.skipped.counts)}).")


def build_sample(
    source: SceneSource,
    scene: SceneRecord,
    context: list[int],
    targets: list[int],
    *,
    image_size: tuple[int, int] | None,
    fields: tuple[str, ...],
    near: float,
    far: float,
) -> dict:
    """Load the context and target frames of ``scene`` into one sample (layout in the module docstring)."""

    def views(positions: list[int]) -> dict[str, torch.Tensor]:
        loaded = [source.load_view(scene, position, image_size, fields) for position in positions]
        bundle = {name: _stack([view[name] for view in loaded]) for name in loaded[0]}
        bundle["extrinsics"] = torch.stack([scene.frames[p].extrinsics for p in positions])
        bundle["intrinsics"] = torch.stack([scene.frames[p].intrinsics for p in positions])
        bundle["near"] = torch.full((len(positions),), float(near))
        bundle["far"] = torch.full((len(positions),), float(far))
        return bundle

    return {
        "context": views(context),
        "target": views(targets),
        "scene": scene.scene_id,
        "index": {"context": torch.tensor(context), "target": torch.tensor(targets)},
    }


def collate_scenes(samples: list[dict]) -> dict:
    """Stack :class:`SceneDataset` samples into the scene batch layout (B first)."""
    if not samples:
        raise ValueError("`samples` must be a non-empty list.")
    batch = {"scene": [sample["scene"] for sample in samples]}
    for part in ("context", "target"):
        keys = list(samples[0][part])
        for sample in samples[1:]:
            if set(sample[part]) != set(keys):
                raise ValueError(
                    f"samples have different {part} fields: {sorted(keys)} vs {sorted(sample[part])} "
                    f"(scene {sample['scene']!r}); pass `fields` to SceneDataset to load the same maps everywhere."
                )
        try:
            batch[part] = {key: _stack([sample[part][key] for sample in samples]) for key in keys}
        except ValueError as error:
            raise ValueError(f"cannot batch {part} views of different shapes; set `image_size` ({error})") from None
    batch["index"] = {part: _stack([sample["index"][part] for sample in samples]) for part in ("context", "target")}
    return batch


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` of CPU tensors done by numpy: torch's intra-op thread pool makes these
    small copies several times slower on a busy CPU (measured in benchmarks/bench_data.py)."""
    return torch.from_numpy(np.stack([tensor.numpy() for tensor in tensors]))


def _open_source(root, *, skip_bad: bool, on_error: str) -> SceneSource:
    if hasattr(root, "load_view") and hasattr(root, "scenes"):
        return root
    if not isinstance(root, (str, Path)):
        from snd_hf.data.hf import HFScenes  # datasets is imported only when used

        return HFScenes(root, skip_bad=skip_bad)
    path = Path(root)
    if (path / "scenes").is_dir() or any(path.glob("*/instance_segmentation")):
        return FolderScenes(path, skip_bad=skip_bad, on_error=on_error)
    from snd_hf.data.hf import HFScenes, load_scene_dataset

    return HFScenes(load_scene_dataset(path), skip_bad=skip_bad)
