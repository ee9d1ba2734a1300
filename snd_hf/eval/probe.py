"""The shared training loop of the linear probes: seeded mini-batches, AdamW, warm-up + cosine, a stopping rule."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

__all__ = ["ProbeConfig", "ProbeFit", "stopping_split", "train_probe"]


@dataclass(frozen=True)
class ProbeConfig:
    """How long and how hard a probe trains.

    Attributes:
        steps: optimiser steps (ignored when ``epochs`` is set); with ``patience``, the most steps.
        batch_size: images per step.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_fraction: share of the steps with a linear learning-rate warm-up.
        epochs: train for this many passes over the training images instead of ``steps``.
        seed: seeds the initialisation of the head and the mini-batch order.
        loss_warmup_steps: first steps that use a loss's warm-up form (SigLoss: 100 in the original).
        patience: the stopping rule (Deviation: the published probes train fixed schedules;
            docs/deviations.md, 41); None trains every step. Otherwise ``validation_fraction`` of
            the training groups (rooms; images when the data has no groups) are set aside, the
            probe's loss on them is measured every ``eval_every`` steps, training stops once it
            has not improved for ``patience`` measurements in a row, and the head of the best
            measurement is kept.
        eval_every: steps between validation measurements.
        validation_fraction: share of the training groups set aside for the stopping rule.
    """

    steps: int = 200
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    epochs: float | None = None
    seed: int = 0
    loss_warmup_steps: int = 0
    patience: int | None = None
    eval_every: int = 50
    validation_fraction: float = 0.25

    def total_steps(self, num_samples: int) -> int:
        """Number of optimiser steps (the most, with a stopping rule) for ``num_samples`` training images."""
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * num_samples / self.batch_size))


@dataclass
class ProbeFit:
    """What :func:`train_probe` did.

    Attributes:
        losses: the training loss of every step taken.
        best_step: steps taken by the head that was kept (all of them without a stopping rule).
        validation: ``(step, validation loss)`` of every measurement of the stopping rule.
    """

    losses: list[float]
    best_step: int
    validation: list[tuple[int, float]] = field(default_factory=list)


def stopping_split(num_samples: int, groups: torch.Tensor | None, config: ProbeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the images a probe trains on and of those its stopping rule measures.

    The last ``validation_fraction`` of the groups (at least one, never all) are set aside whole,
    so validation images come from rooms the probe does not train on; without groups, the last
    images are. Without a stopping rule every image trains and none is set aside.

    Args:
        num_samples: training images N.
        groups: group (room) id of every image, or None. [N]
        config: ``patience`` and ``validation_fraction``.

    Returns:
        fit and validation indices. [N_fit], [N_val]
    """
    everything = torch.arange(num_samples)
    if config.patience is None:
        return everything, everything[:0]
    keys = everything if groups is None else groups
    unique = torch.unique(keys)  # sorted
    if len(unique) < 2:
        raise ValueError(f"the probe's stopping rule needs at least 2 training groups (rooms or images), got {len(unique)}")
    held = min(len(unique) - 1, max(1, round(config.validation_fraction * len(unique))))
    validation = torch.isin(keys, unique[-held:])
    return everything[~validation], everything[validation]


def train_probe(
    probe: torch.nn.Module,
    batch_loss: Callable[[torch.Tensor, int], torch.Tensor],
    num_samples: int,
    config: ProbeConfig,
    description: str = "probe",
    validation_loss: Callable[[], float] | None = None,
) -> ProbeFit:
    """Train ``probe`` in place on frozen features.

    Args:
        probe: the head; only its parameters are optimised.
        batch_loss: ``(indices, step) -> loss`` for a mini-batch of training-sample indices. [b]
        num_samples: size of the training set.
        config: schedule, seed and stopping rule.
        description: progress-bar label.
        validation_loss: the probe's loss on the images set aside (required with ``config.patience``).

    Returns:
        the losses, the step of the head kept and the validation measurements.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if config.patience is not None and validation_loss is None:
        raise ValueError("a probe with a stopping rule (patience) needs a validation_loss")
    generator = torch.Generator().manual_seed(config.seed)
    total = config.total_steps(num_samples)
    warmup = max(1, int(config.warmup_fraction * total))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def learning_rate_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    fit = ProbeFit(losses=[], best_step=total)
    best_loss, best_state, stale = math.inf, None, 0
    order = torch.empty(0, dtype=torch.long)
    progress = tqdm(range(total), desc=description, leave=False, disable=None)
    probe.train()
    for step in progress:
        # Epoch-style sampling: a fresh permutation whenever the previous one is used up.
        if order.numel() < config.batch_size:
            order = torch.cat([order, torch.randperm(num_samples, generator=generator)])
        indices, order = order[: config.batch_size], order[config.batch_size :]
        loss = batch_loss(indices, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        fit.losses.append(float(loss.detach()))
        progress.set_postfix(loss=f"{fit.losses[-1]:.4f}")
        if config.patience is None or ((step + 1) % config.eval_every and step + 1 < total):
            continue
        probe.eval()
        with torch.no_grad():
            measured = float(validation_loss())
        probe.train()
        fit.validation.append((step + 1, measured))
        if measured < best_loss:
            best_loss, best_state, stale, fit.best_step = measured, copy.deepcopy(probe.state_dict()), 0, step + 1
        else:
            stale += 1
            if stale >= config.patience:
                break
    progress.close()
    if best_state is not None:
        probe.load_state_dict(best_state)
    probe.eval()
    return fit
