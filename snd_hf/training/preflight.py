"""Everything a training run can check before it generates data or builds a model.

:meth:`TrainingConfig.validate` checks the config's own values and paths; :func:`check_before_compute`
adds the run's surroundings: the folders it writes (:mod:`.outputs`), its learning-rate schedule,
its non-finite policy and, with ``push_to_hub``, access to the Hub (:mod:`.push`). Each failure is
one exception whose message names the key and the fix.
"""

from __future__ import annotations

from .config import TrainingConfig
from .outputs import check_output_dir, check_synthetic_dataset_path
from .push import check_push_access
from .schedule import SPARE_STEPS, one_cycle_factor


def check_before_compute(config: TrainingConfig) -> None:
    """Raise ValueError (folders, schedule, guard settings), PermissionError or ConnectionError (Hub)
    when the run described by ``config`` would fail or destroy data later."""
    check_output_dir(
        config.output_dir, overwrite=config.overwrite_output_dir, resume=bool(config.resume_from_checkpoint)
    )
    if config.dataset == "synthetic" and config.dataset_path:
        check_synthetic_dataset_path(config.dataset_path)
    one_cycle_factor(0, config.max_steps + SPARE_STEPS, config.warmup_ratio)  # warmup_ratio in [0, 1]
    if config.max_skipped_steps < 0:
        raise ValueError(f"max_skipped_steps must be >= 0, got {config.max_skipped_steps}.")
    if config.push_to_hub:
        check_push_access(config.hub_model_id, private=config.hub_private)
