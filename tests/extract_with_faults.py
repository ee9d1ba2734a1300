"""``snd extract`` with a fault injected from outside the package, for the kill tests.

    SND_EXTRACT_KILL=RANK:IMAGES accelerate launch ... tests/extract_with_faults.py extract ARGS...

Process RANK kills itself (SIGKILL) once it has extracted IMAGES images (counted over all its
calls of ``snd_hf.extract.stream_features``), before it writes the shard or file they belong to.
"""

from __future__ import annotations

import os
import signal
import sys

import snd_hf.extract
from snd_hf.cli import main
from snd_hf.distributed import process_state


def kill_after(count: int):
    extracted = 0
    stream_features = snd_hf.extract.stream_features

    def stream_then_kill(*args, **kwargs):
        nonlocal extracted
        for item in stream_features(*args, **kwargs):
            yield item
            extracted += 1
            if extracted == count:
                os.kill(os.getpid(), signal.SIGKILL)

    return stream_then_kill


if __name__ == "__main__":
    rank, _, images = os.environ["SND_EXTRACT_KILL"].partition(":")
    if process_state().process_index == int(rank):
        snd_hf.extract.stream_features = kill_after(int(images))
    sys.exit(main(sys.argv[1:]))
