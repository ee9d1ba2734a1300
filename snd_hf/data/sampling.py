"""View sampling shared by every scene reader: which frames one sample takes, and loading them.

SnD's bounded sampler: the context views span ``context_gap`` frames and the targets lie between
them (``"between"``, inclusive as in the original; ``"inside"``, never a context frame itself) or
outside them (``target_mode="novel"``). :class:`SamplingOptions` holds the keyword
arguments of :class:`~snd_hf.data.scenes.SceneDataset` and draws a sample's positions from a random
stream that depends only on ``(seed, epoch, scene id, draw)``, so the folder, ``datasets`` and
streamed readers give the same samples.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch

from snd_hf.data.scannetpp import OPTIONAL_FIELDS, SceneRecord, SkipLog


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
    target_mode: Literal["between", "inside", "novel"] = "between",
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
    elif target_mode == "inside":
        # A target equal to a context view is rendered from itself: it teaches no geometry.
        candidates = np.setdiff1d(np.arange(left + 1, right), context)
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
    target_mode: Literal["between", "inside", "novel"] = "between"
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
        if self.target_mode not in ("between", "inside", "novel"):
            raise ValueError(f"`target_mode` must be 'between', 'inside' or 'novel', got {self.target_mode!r}.")
        if self.target_mode == "inside" and gap[0] < self.num_context:
            raise ValueError(
                f"`target_mode` 'inside' needs a frame between the context views: `context_gap` >= {self.num_context}, "
                f"got {self.context_gap!r}."
            )
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
        bundle = {name: stack_arrays([view[name] for view in loaded]) for name in loaded[0]}
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


def stack_arrays(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` of CPU tensors done by numpy: torch's intra-op thread pool makes these
    small copies several times slower on a busy CPU (measured in benchmarks/bench_data.py)."""
    return torch.from_numpy(np.stack([tensor.numpy() for tensor in tensors]))
