"""Fault injection for the kill tests, from outside the package."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable


def kill_before_move(number: int) -> Callable[[], int]:
    """Make this process kill itself (SIGKILL) just before its file move number ``number`` (0-based).

    Counts every ``os.replace`` and ``os.rename`` from now on: the moves that publish an atomic write
    (``snd_hf.files``) and a run folder's commit (``snd_hf.run_folder``). A negative ``number``
    kills nothing: it only counts.

    Returns:
        a function giving the number of moves made so far.
    """
    moves = 0

    def counted(real):
        def move(*args, **kwargs):
            nonlocal moves
            if moves == number:
                os.kill(os.getpid(), signal.SIGKILL)
            moves += 1
            return real(*args, **kwargs)

        return move

    os.replace, os.rename = counted(os.replace), counted(os.rename)
    return lambda: moves
