"""Per-sample cache of the teacher's linear operator, for training with a frozen lifter.

The teacher's map from context tokens to target-token targets (:mod:`snd_hf.splatting.operator`)
depends only on a sample's views (depth or MVSplat's Gaussians, poses, masks), never on the
networks being trained. A sample seen again therefore reuses its operator, and the step skips the
lifter, the renderer and the mask operations.

A sample is identified by its scene id, the positions of its context and target frames in the
scene and its image sizes (``batch["scene"]``, ``batch["index"]``, the image shapes): unique
within one dataset, which is all one cache serves (one cache per run and dataset). Memory is
bounded by ``max_bytes``: the least recently used samples are dropped beyond it (at the tiny
recipe's 84x112 images an operator takes about 15 KB per sample).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from ..splatting.operator import TeacherOperator
from ..splatting.teacher import SplatTeacher

SampleKey = tuple


class OperatorCache:
    """Build each sample's :class:`~snd_hf.splatting.operator.TeacherOperator` once, reuse it after.

    Args:
        splat_teacher: the teacher whose operators are cached; its lifter must be frozen.
        max_bytes: most memory the cached operators may hold.
    """

    def __init__(self, splat_teacher: SplatTeacher, max_bytes: float):
        if any(p.requires_grad for p in splat_teacher.lifter.parameters()):
            raise ValueError("the teacher operator can only be cached with a frozen lifter (it has trainable parameters).")
        if max_bytes <= 0:
            raise ValueError(f"`max_bytes` must be positive, got {max_bytes}.")
        self.splat_teacher, self.max_bytes = splat_teacher, max_bytes
        self._entries: OrderedDict[SampleKey, TeacherOperator] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, batch: dict) -> TeacherOperator:
        """The operator of ``batch`` (a scene batch with ``scene`` and ``index``), built only for new samples."""
        keys = [sample_key(batch, b) for b in range(len(batch["scene"]))]
        missing = [b for b, key in enumerate(keys) if key not in self._entries]
        built = {}
        if missing:
            fresh = self.splat_teacher.operator(select_samples(batch, missing)).split()
            built = {keys[b]: operator for b, operator in zip(missing, fresh)}
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        operators = []
        for key in keys:
            if key in built and key not in self._entries:
                self._entries[key] = built[key]
                self.nbytes += built[key].nbytes()
            self._entries.move_to_end(key)
            operators.append(self._entries[key])
        while self.nbytes > self.max_bytes and len(self._entries) > 1:
            _, dropped = self._entries.popitem(last=False)
            self.nbytes -= dropped.nbytes()
        return TeacherOperator.cat(operators)


def sample_key(batch: dict, b: int) -> SampleKey:
    """What identifies sample ``b`` of a scene batch within its dataset."""
    return (
        batch["scene"][b],
        tuple(batch["index"]["context"][b].tolist()),
        tuple(batch["index"]["target"][b].tolist()),
        tuple(batch["context"]["image"].shape[-2:]),
        tuple(batch["target"]["image"].shape[-2:]),
    )


def select_samples(batch: dict, indices: list[int]) -> dict:
    """The samples ``indices`` of a scene batch, as a batch."""
    rows = torch.tensor(indices, dtype=torch.long)
    selected = {
        part: {name: value[rows.to(value.device)] for name, value in batch[part].items()} for part in ("context", "target")
    }
    selected["scene"] = [batch["scene"][i] for i in indices]
    selected["index"] = {part: batch["index"][part][rows] for part in ("context", "target")}
    return selected
