"""What a resumed run may change, and how the change is recorded.

A run resumed with ``--resume_from_checkpoint`` continues the run its ``output_dir`` holds, so its
settings must be that run's (``output_dir/config.yaml``, written when the run started). Settings
that change what a step computes (seed, learning rate, loss, image size, batch size, data, model...)
are refused, naming every differing key, before any compute. Only the settings of
:data:`SAFE_ON_RESUME` may change: how long the run lasts (``max_steps``: the schedule then follows
the new length from the resumed step on), how often it logs and saves, how many checkpoints it
keeps, what it does with a non-finite step, trackers, the Hub upload and caches that do not change
the numbers. Each accepted change is recorded in ``config.yaml`` as a comment line above the
settings (``# resumed from checkpoints/step_2: max_steps 2 -> 4``), earlier records kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..files import atomic_write
from .checkpoints import resolve_checkpoint
from .config import TrainingConfig

RUN_CONFIG = "config.yaml"
SAFE_ON_RESUME: tuple[str, ...] = (
    "output_dir",  # a run folder moved or copied elsewhere resumes where it now is
    "max_steps",
    "save_steps",
    "log_steps",
    "checkpoints_total_limit",
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "on_nonfinite",
    "max_skipped_steps",
    "report_to",
    "push_to_hub",
    "hub_model_id",
    "hub_private",
    "num_workers",
    "cache_views",
    "cache_operator",
    "operator_cache_mb",
)
_RECORD = "# resumed from "


def resume_changes(config: TrainingConfig) -> dict[str, tuple[Any, Any]]:
    """The settings of ``config`` that differ from those its run started with: ``{key: (earlier, now)}``.

    Empty when the run is not resumed, starts afresh (``overwrite_output_dir``, no complete
    checkpoint) or its folder has no ``config.yaml``. ``resume_from_checkpoint`` itself is left out.

    Raises:
        ValueError: a setting outside :data:`SAFE_ON_RESUME` differs (all such keys are named, with
            both values), or the earlier ``config.yaml`` is not a valid training config.
    """
    output_dir = Path(config.output_dir)
    path = output_dir / RUN_CONFIG
    if not config.resume_from_checkpoint or config.overwrite_output_dir or not path.is_file():
        return {}
    if resolve_checkpoint(output_dir, config.resume_from_checkpoint) is None:
        return {}  # nothing to resume: the run starts from scratch with these settings
    earlier = TrainingConfig.from_yaml(path)
    differ = {
        key: (getattr(earlier, key), getattr(config, key))
        for key in TrainingConfig.keys()
        if getattr(earlier, key) != getattr(config, key) and key != "resume_from_checkpoint"
    }
    unsafe = [key for key in differ if key not in SAFE_ON_RESUME]
    if unsafe:
        shown = ", ".join(f"{key} ({differ[key][0]!r} -> {differ[key][1]!r})" for key in unsafe)
        raise ValueError(
            f"--resume_from_checkpoint: the run in {output_dir} was started with other settings ({path}): {shown}. "
            f"Resume with its settings (only {', '.join(SAFE_ON_RESUME)} may change), or start a new run "
            "(another --output_dir, or --overwrite_output_dir)."
        )
    return differ


def write_run_config(config: TrainingConfig) -> None:
    """Write ``output_dir/config.yaml``: the settings, below the records of earlier resumes and, when
    this run resumes with changed settings (:func:`resume_changes`), a record of them."""
    output_dir = Path(config.output_dir)
    path = output_dir / RUN_CONFIG
    changes = resume_changes(config)
    records = [line for line in path.read_text().splitlines() if line.startswith(_RECORD)] if path.is_file() else []
    if changes:
        checkpoint = resolve_checkpoint(output_dir, config.resume_from_checkpoint)
        where = checkpoint.relative_to(output_dir) if checkpoint.is_relative_to(output_dir) else checkpoint
        records.append(_RECORD + f"{where}: " + ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items()))
    text = "".join(f"{line}\n" for line in records) + config.to_yaml()
    atomic_write(path, lambda temporary: Path(temporary).write_text(text))
