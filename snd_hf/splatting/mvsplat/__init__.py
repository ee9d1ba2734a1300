"""MVSplat's cost-volume encoder (as configured by SnD), ported to load MVSplat checkpoints strictly."""

from .lifter import (
    MVSplatConfig,
    MVSplatLifter,
    MVSplatOutput,
    convert_checkpoint,
    load_checkpoint_state_dict,
)

__all__ = ["MVSplatConfig", "MVSplatLifter", "MVSplatOutput", "convert_checkpoint", "load_checkpoint_state_dict"]
