"""Tiny generated scenes shared by the data tests (2 scenes x 12 frames at 48x64)."""

from __future__ import annotations

import pytest

from snd_hf.data.synthetic import generate_scenes

TINY = {"num_scenes": 2, "num_frames": 12, "height": 48, "width": 64, "seed": 3}


@pytest.fixture(scope="session")
def tiny_scenes(tmp_path_factory):
    """Read-only generated dataset; copy it before modifying anything."""
    return generate_scenes(tmp_path_factory.mktemp("synthetic") / "tiny", progress=False, **TINY)
