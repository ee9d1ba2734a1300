"""Everything a training run can check before it generates data or builds a model.

:meth:`TrainingConfig.validate` checks the config's own values and paths; :func:`check_before_compute`
adds the run's surroundings: the folders it writes (:mod:`.outputs`), its learning-rate schedule,
its non-finite policy and, with ``push_to_hub``, access to the Hub (:mod:`.push`). Each failure is
one exception whose message names the key and the fix. :func:`cpu_contention` only warns: a busy
CPU slows a run down but does not make it fail.
"""

from __future__ import annotations

import os

import torch

from .config import TrainingConfig
from .outputs import check_output_dir, check_synthetic_dataset_path
from .push import check_push_access
from .resume import resume_changes
from .schedule import SPARE_STEPS, one_cycle_factor


def check_before_compute(config: TrainingConfig) -> None:
    """Raise ValueError (folders, resumed settings, schedule, guard settings), PermissionError or ConnectionError (Hub)
    when the run described by ``config`` would fail or destroy data later."""
    check_output_dir(
        config.output_dir, overwrite=config.overwrite_output_dir, resume=bool(config.resume_from_checkpoint)
    )
    resume_changes(config)  # a resumed run keeps its settings, but for the safe ones
    if config.dataset == "synthetic" and config.dataset_path:
        check_synthetic_dataset_path(config.dataset_path)
    one_cycle_factor(0, config.max_steps + SPARE_STEPS, config.warmup_ratio)  # warmup_ratio in [0, 1]
    if config.push_to_hub:
        check_push_access(config.hub_model_id, private=config.hub_private)


def cpu_contention(device_type: str) -> str | None:
    """A one-line warning when torch's CPU threads would compete with other jobs, else None.

    The tiny default run's ops are too small to gain from threads, and on a CPU that other jobs
    already load, threads that wait on each other cost far more than they bring (measured on 2
    shared cores: 13 s per step of the default run with torch's 2 threads, 0.35 s with
    ``OMP_NUM_THREADS=1``). Silent on an accelerator, with one thread, or below one unit of
    1-minute load average per core (and where the OS reports no load average).

    Args:
        device_type: the training device's type (``accelerator.device.type``).
    """
    threads = torch.get_num_threads()
    if device_type != "cpu" or threads <= 1 or not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load < cores:
        return None
    return (
        f"the CPU is busy (1-minute load average {load:.1f} on {cores} cores) and torch runs {threads} threads: "
        "small CPU steps can run many times slower; set OMP_NUM_THREADS=1."
    )
