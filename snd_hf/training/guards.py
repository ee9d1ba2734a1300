"""Non-finite losses, gradients and weights: detected at the step they appear, never applied or saved.

A NaN or inf (a too-large learning rate, one corrupt pixel) used to spread silently into the
weights, every later checkpoint and the exports. :class:`NonFiniteGuard` watches each optimizer
step: a non-finite loss on any micro-batch of any process, or a non-finite gradient, means the
update is not applied. With ``on_nonfinite="stop"`` (the default) the run then stops with
:class:`NonFiniteError` naming the step and the samples of that step; with ``"skip"`` the step is
dropped and the run goes on, at most ``max_skipped_steps`` times. :func:`check_finite_weights` is
the last line before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from accelerate.utils import gather_object
from torch import nn


class NonFiniteError(RuntimeError):
    """Training met a NaN or inf: the run stops before the bad values reach any saved file."""


def first_non_finite(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or inf, or None if all are finite."""
    for name, tensor in named_tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def check_finite_weights(modules: dict[str, nn.Module], step: int) -> None:
    """Raise :class:`NonFiniteError` naming the first non-finite weight of ``modules`` (role → module).

    Called before every checkpoint and export: nothing non-finite is ever written.
    """
    for role, module in modules.items():
        name = first_non_finite(module.state_dict().items())
        if name is not None:
            raise NonFiniteError(
                f"the {role} weight {name!r} is not finite at step {step}; nothing was saved "
                "(earlier checkpoints are untouched). Lower --learning_rate or check the data."
            )


def describe_samples(batch: dict) -> list[str]:
    """One line per sample of a scene batch: scene id, frame positions, inputs holding NaN/inf."""
    lines = []
    for b, scene in enumerate(batch["scene"]):
        frames = ", ".join(f"{part} frames {batch['index'][part][b].tolist()}" for part in ("context", "target"))
        bad = [
            f"{part} {key}"
            for part in ("context", "target")
            for key, value in batch[part].items()
            if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value[b]).all())
        ]
        note = f"; non-finite input: {', '.join(bad)}" if bad else ""
        lines.append(f"scene {scene!r} ({frames}{note})")
    return lines


def loss_or_none(value: float) -> float | None:
    """A loss for JSON: None (``null``) instead of NaN/inf, which are not valid JSON."""
    return value if math.isfinite(value) else None


class NonFiniteGuard:
    """Decides, once per optimizer step, whether its update is finite; remembers why not.

    Use inside the loop::

        guard.observe(loss, batch)                        # every micro-batch, after backward
        if accelerator.sync_gradients:
            if guard.update_is_finite(accelerator, student.parameters()):
                optimizer.step()
        ...
        guard.end_step(global_step)                       # raises NonFiniteError when stopping

    Args:
        on_nonfinite: ``"stop"`` raises at the first non-finite step; ``"skip"`` drops the step.
        max_skipped_steps: with ``"skip"``, the run stops once more steps than this were dropped.
        check_gradients: False under fp16 loss scaling, whose scaler skips overflowing steps itself.
    """

    def __init__(
        self, on_nonfinite: Literal["stop", "skip"], max_skipped_steps: int, *, check_gradients: bool = True
    ) -> None:
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}.")
        self.on_nonfinite = on_nonfinite
        self.max_skipped_steps = max_skipped_steps
        self.check_gradients = check_gradients
        self.skipped_steps: list[int] = []
        # Per micro-batch of the current step: whether its loss is finite (a device tensor: no sync
        # per micro-batch) and the batch, described only if the step fails.
        self._micro_batches: list[tuple[torch.Tensor, dict]] = []
        self._failure: str | None = None
        self._is_main_process = True

    def observe(self, loss: torch.Tensor, batch: dict) -> None:
        """Record one micro-batch's loss (a scalar tensor) and which samples it came from."""
        self._micro_batches.append((torch.isfinite(loss.detach()).all(), batch))

    def update_is_finite(self, accelerator, parameters: Iterable[nn.Parameter]) -> bool:
        """Whether this optimizer step's losses (all processes) and gradients are finite.

        A collective call: every process must make it at every optimizer step.
        """
        self._is_main_process = accelerator.is_main_process
        flags = [finite for finite, _ in self._micro_batches]
        loss_finite = bool(torch.stack(flags).all()) if flags else True
        grads_finite = True
        if self.check_gradients:
            grads = [p.grad for p in parameters if p.grad is not None]
            grads_finite = not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        local_bad = torch.tensor([float(not loss_finite), float(not grads_finite)], device=accelerator.device)
        bad = accelerator.reduce(local_bad, reduction="sum") if accelerator.num_processes > 1 else local_bad
        finite = not bool(bad.any())
        if not finite:
            # Every process names its own samples; the gather is on this failure path only.
            groups = self._micro_batches
            lines = [
                (f"micro-batch {i + 1} ({'finite' if bool(ok) else 'non-finite'} loss): " if len(groups) > 1 else "")
                + ", ".join(describe_samples(batch))
                for i, (ok, batch) in enumerate(groups)
            ]
            per_process = gather_object([lines]) if accelerator.num_processes > 1 else [lines]
            samples = "; ".join(
                (f"process {rank}: " if len(per_process) > 1 else "") + line
                for rank, group in enumerate(per_process)
                for line in group
            )
            what = "loss" if bad[0] > 0 else "gradient"
            self._failure = f"non-finite {what} at step {{step}}; its samples: {samples}"
        self._micro_batches = []
        return finite

    @property
    def step_failed(self) -> bool:
        """Whether the step just checked by :meth:`update_is_finite` was not applied."""
        return self._failure is not None

    def end_step(self, step: int) -> None:
        """Close optimizer step ``step``: raise :class:`NonFiniteError` if the run must stop."""
        if self._failure is None:
            return
        failure, self._failure = self._failure.replace("{step}", str(step), 1), None
        if self.on_nonfinite == "skip":
            self.skipped_steps.append(step)
            if len(self.skipped_steps) <= self.max_skipped_steps:
                if self._is_main_process:
                    print(f"warning: skipped step {step}: {failure}")
                return
            raise NonFiniteError(
                f"{failure}. {len(self.skipped_steps)} steps were skipped ({self.skipped_steps}), more than "
                f"max_skipped_steps ({self.max_skipped_steps}); nothing of them was applied or saved."
            )
        raise NonFiniteError(
            f"{failure}. The update was not applied and nothing of it was saved (earlier checkpoints are "
            "untouched); lower --learning_rate, check those samples, or pass --on_nonfinite skip."
        )
