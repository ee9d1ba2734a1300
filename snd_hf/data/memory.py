"""Decoded views kept in memory, so that a small dataset is read from disk once per view.

A training sample decodes three views (image, mask, depth: PNG decoding and resizing), and the
tiny CPU recipe draws each of its views many times over a run.
:class:`InMemoryViews` wraps any scene source (see :class:`~snd_hf.data.sampling.SceneSource`)
and decodes each view once. Memory: every view the dataset loads stays (about 230 KB per
84x112 view with its mask and depth, so 45 MB for the recipe's 16 scenes of 12 frames); use it for
small datasets only (``TrainingConfig.cache_views``).
"""

from __future__ import annotations

import torch

from snd_hf.data.sampling import SceneSource
from snd_hf.data.scannetpp import SceneRecord


class InMemoryViews:
    """A :class:`~snd_hf.data.sampling.SceneSource` that remembers every view it has loaded.

    Args:
        source: the source that reads views from disk (a folder, a ``datasets`` table...).
    """

    def __init__(self, source: SceneSource):
        self.source = source
        self._views: dict[tuple, dict[str, torch.Tensor]] = {}

    @property
    def scenes(self) -> list[SceneRecord]:
        return self.source.scenes

    @property
    def skipped(self):
        return self.source.skipped

    def __len__(self) -> int:
        """Views held in memory."""
        return len(self._views)

    def load_view(
        self, scene: SceneRecord, position: int, size: tuple[int, int] | None, fields: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        """The source's view (decoded on first use; unreadable views are not remembered and raise again)."""
        key = (scene.scene_id, position, size, tuple(fields))
        if key not in self._views:
            self._views[key] = self.source.load_view(scene, position, size, fields)
        return self._views[key]
