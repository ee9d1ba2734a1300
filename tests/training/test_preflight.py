"""Preflight checks before training: the CPU-contention warning."""

from __future__ import annotations

import pytest

import snd_hf.training.preflight as preflight
from snd_hf.training.preflight import cpu_contention


@pytest.mark.parametrize(
    ("device", "threads", "load", "warned"),
    [("cpu", 2, 3.5, True), ("cpu", 2, 1.2, False), ("cpu", 1, 3.5, False), ("cuda", 2, 3.5, False)],
)
def test_cpu_contention_warns_only_for_several_threads_on_a_busy_cpu(device, threads, load, warned, monkeypatch):
    monkeypatch.setattr(preflight.os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(preflight.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(preflight.torch, "get_num_threads", lambda: threads)
    message = cpu_contention(device)
    if warned:
        assert message == (
            "the CPU is busy (1-minute load average 3.5 on 2 cores) and torch runs 2 threads: "
            "small CPU steps can run many times slower; set OMP_NUM_THREADS=1."
        )
    else:
        assert message is None
