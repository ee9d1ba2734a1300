"""Training pieces reused by ``training/train.py``: config, DINO heads, EMA, loss, checkpoints.

The names below load on first use (PEP 562): ``snd_hf.training.config`` imports no torch, so
``training/train.py --help`` and its argument errors answer before torch loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_attribute

# Public name -> the submodule defining it.
_LAZY_NAMES = {
    "DINOHead": "heads",
    "ParameterEMA": "ema",
    "TrainingConfig": "config",
    "distillation_loss": "loss",
    "ema_update": "ema",
    "list_checkpoints": "checkpoints",
    "make_ema_teacher": "ema",
    "resolve_checkpoint": "checkpoints",
}

if TYPE_CHECKING:
    from .checkpoints import list_checkpoints, resolve_checkpoint
    from .config import TrainingConfig
    from .ema import ParameterEMA, ema_update, make_ema_teacher
    from .heads import DINOHead
    from .loss import distillation_loss


def __getattr__(name: str):
    return lazy_attribute(__name__, _LAZY_NAMES, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_NAMES})


__all__ = [
    "DINOHead",
    "ParameterEMA",
    "TrainingConfig",
    "distillation_loss",
    "ema_update",
    "list_checkpoints",
    "make_ema_teacher",
    "resolve_checkpoint",
]
