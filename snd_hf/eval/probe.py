"""The shared training loop of the linear probes: seeded mini-batches, AdamW, warm-up + cosine."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

__all__ = ["ProbeConfig", "train_probe"]


@dataclass(frozen=True)
class ProbeConfig:
    """How long and how hard a probe trains.

    Attributes:
        steps: optimiser steps (ignored when ``epochs`` is set).
        batch_size: images per step.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_fraction: share of the steps with a linear learning-rate warm-up.
        epochs: train for this many passes over the training images instead of ``steps``.
        seed: seeds the initialisation of the head and the mini-batch order.
        loss_warmup_steps: first steps that use a loss's warm-up form (SigLoss: 100 in the original).
    """

    steps: int = 200
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    epochs: float | None = None
    seed: int = 0
    loss_warmup_steps: int = 0

    def total_steps(self, num_samples: int) -> int:
        """Number of optimiser steps for a training set of ``num_samples`` images."""
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * num_samples / self.batch_size))


def train_probe(
    probe: torch.nn.Module,
    batch_loss: Callable[[torch.Tensor, int], torch.Tensor],
    num_samples: int,
    config: ProbeConfig,
    description: str = "probe",
) -> list[float]:
    """Train ``probe`` in place on frozen features.

    Args:
        probe: the head; only its parameters are optimised.
        batch_loss: ``(indices, step) -> loss`` for a mini-batch of training-sample indices. [b]
        num_samples: size of the training set.
        config: schedule and seed.
        description: progress-bar label.

    Returns:
        the loss of every step.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    generator = torch.Generator().manual_seed(config.seed)
    total = config.total_steps(num_samples)
    warmup = max(1, int(config.warmup_fraction * total))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def learning_rate_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    probe.train()
    losses = []
    order = torch.empty(0, dtype=torch.long)
    progress = tqdm(range(total), desc=description, leave=False)
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
        losses.append(float(loss.detach()))
        progress.set_postfix(loss=f"{losses[-1]:.4f}")
    probe.eval()
    return losses
