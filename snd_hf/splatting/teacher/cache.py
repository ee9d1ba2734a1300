"""Per-view cache of the teacher's linear operator, for training with a frozen lifter.

The teacher's map from context tokens to target-token targets (:mod:`~snd_hf.splatting.teacher.operator`)
depends only on the views (depth or MVSplat's Gaussians, poses, masks), never on the networks
being trained, and each target view's rows depend only on that view and the context views. So
the cache holds one entry per (context views, target view): a sample seen again, or another
sample that shares a context pair and a target with it, reuses those rows, and the step skips the
lifter, the renderer and the mask operations. Keying by target view, not by sample, matters when
a sample carries several targets (``num_targets``): the recipe's 640 samples of 4 targets hold
only 640 distinct (context pair, target) views, each rendered once instead of up to four times.

A view is identified by its scene id, the positions of its context frames and of the target frame
in the scene and the image sizes (``batch["scene"]``, ``batch["index"]``, the image shapes):
unique within one dataset, which is all one cache serves (one cache per run and dataset). Memory
is bounded by ``max_bytes``: the least recently used views are dropped beyond it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from .operator import TeacherOperator
from .splat_teacher import SplatTeacher

ViewKey = tuple


class OperatorCache:
    """Build each target view's rows of the :class:`~snd_hf.splatting.teacher.operator.TeacherOperator` once, reuse them after.

    Args:
        splat_teacher: the teacher whose operators are cached; its lifter must be frozen.
        max_bytes: most memory the cached operators may hold.

    Attributes:
        hits, misses: target views found in the cache and built, over all calls.
    """

    def __init__(self, splat_teacher: SplatTeacher, max_bytes: float):
        if any(p.requires_grad for p in splat_teacher.lifter.parameters()):
            raise ValueError("the teacher operator can only be cached with a frozen lifter (it has trainable parameters).")
        if max_bytes <= 0:
            raise ValueError(f"`max_bytes` must be positive, got {max_bytes}.")
        self.splat_teacher, self.max_bytes = splat_teacher, max_bytes
        self._entries: OrderedDict[ViewKey, TeacherOperator] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, batch: dict) -> TeacherOperator:
        """The operator of ``batch`` (a scene batch with ``scene`` and ``index``), built only for new target views."""
        samples, views = batch["target"]["image"].shape[:2]
        keys = [[view_key(batch, b, v) for v in range(views)] for b in range(samples)]
        built = {}
        for b in range(samples):  # one build per sample with new views: its lifter runs once
            missing = [v for v in range(views) if keys[b][v] not in self._entries and keys[b][v] not in built]
            if missing:
                fresh = self.splat_teacher.operator(select_views(batch, b, missing))
                built.update(zip((keys[b][v] for v in missing), fresh.split_views()))
        self.misses += len(built)
        self.hits += samples * views - len(built)
        for key, operator in built.items():
            self._entries[key] = operator
            self.nbytes += operator.nbytes()
        for row in keys:
            for key in row:
                self._entries.move_to_end(key)
        operators = [TeacherOperator.stack_views([self._entries[key] for key in row]) for row in keys]
        while self.nbytes > self.max_bytes and len(self._entries) > 1:
            _, dropped = self._entries.popitem(last=False)
            self.nbytes -= dropped.nbytes()
        return TeacherOperator.cat(operators)


def view_key(batch: dict, b: int, v: int) -> ViewKey:
    """What identifies target view ``v`` of sample ``b`` of a scene batch, with its context views, within its dataset."""
    return (
        batch["scene"][b],
        tuple(batch["index"]["context"][b].tolist()),
        int(batch["index"]["target"][b, v]),
        tuple(batch["context"]["image"].shape[-2:]),
        tuple(batch["target"]["image"].shape[-2:]),
    )


def select_views(batch: dict, b: int, views: list[int]) -> dict:
    """Sample ``b`` of a scene batch with only the target views ``views``, as a batch of one."""
    rows = torch.tensor(views, dtype=torch.long)
    context = {name: value[b : b + 1] for name, value in batch["context"].items()}
    target = {name: value[b : b + 1, rows.to(value.device)] for name, value in batch["target"].items()}
    index = {"context": batch["index"]["context"][b : b + 1], "target": batch["index"]["target"][b : b + 1, rows]}
    return {"context": context, "target": target, "scene": [batch["scene"][b]], "index": index}
