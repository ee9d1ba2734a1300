"""Which process this is, for commands that split their work across processes started by ``accelerate launch``
(`snd extract`, `snd eval`); alone, a process is the whole run."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from accelerate import PartialState
from accelerate.utils import broadcast_object_list, parse_flag_from_env

__all__ = ["main_then_share", "process_state"]

T = TypeVar("T")


def process_state() -> PartialState:
    """accelerate's state of this process: its rank among the processes ``accelerate launch`` started (GPUs,
    nodes, or CPU processes when ``ACCELERATE_USE_CPU`` is set, which `PartialState` alone does not read), or
    one process on the best device when started without the launcher."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def main_then_share(state: PartialState, action: Callable[[], T]) -> T:
    """Run ``action`` on the main process only and give its result, or raise its error, on every process.

    For what must happen once and before any process goes on (checking inputs, claiming an output folder): the
    other processes wait for it, and stop with the same error rather than wait forever on a main process that
    stopped.
    """
    outcome: list[tuple[bool, object]] = [(True, None)]
    if state.is_main_process:
        try:
            outcome = [(True, action())]
        except Exception as error:
            if state.num_processes == 1:
                raise
            outcome = [(False, error)]
    if state.num_processes > 1:
        outcome = broadcast_object_list(outcome)
    done, value = outcome[0]
    if not done:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]
