"""Checkpoint folders: `latest` skips interrupted saves, `total_limit` prunes the oldest."""

from __future__ import annotations

import pytest

from snd_hf.training.checkpoints import (
    finalize_checkpoint,
    list_checkpoints,
    resolve_checkpoint,
    temporary_checkpoint_dir,
)


def test_latest_ignores_interrupted_saves_and_limit_prunes(tmp_path):
    assert resolve_checkpoint(tmp_path, "latest") is None
    for step in (10, 20, 30):
        tmp = temporary_checkpoint_dir(tmp_path, step)
        (tmp / "state.bin").write_bytes(b"x")
        finalize_checkpoint(tmp, total_limit=2)
    again = temporary_checkpoint_dir(tmp_path, 30)  # the same step saved again replaces it
    (again / "state.bin").write_bytes(b"y")
    finalize_checkpoint(again, total_limit=2)
    assert (tmp_path / "checkpoints" / "step_30" / "state.bin").read_bytes() == b"y"
    temporary_checkpoint_dir(tmp_path, 40)  # a save killed before its rename
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_20", "step_30"]
    assert resolve_checkpoint(tmp_path, "latest").name == "step_30"
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        resolve_checkpoint(tmp_path, str(tmp_path / "nope"))
