"""Training pieces reused by ``training/train.py``: config, DINO heads, EMA, loss, checkpoints."""

from .checkpoints import list_checkpoints, resolve_checkpoint
from .config import TrainingConfig
from .ema import ParameterEMA, ema_update, make_ema_teacher
from .heads import DINOHead
from .loss import distillation_loss

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
