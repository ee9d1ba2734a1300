"""training/train.py with test-only faults, given by the tests through the environment.

    python tests/training/train_with_faults.py ARGS...      (or after ``accelerate launch``)

``SND_TRAIN_TEST_KILL``: ``during_save:N`` SIGKILLs the process once the checkpoint of step N is
written but before it is renamed into place; ``during_export:N`` once the final export of step N
is written but before it is swapped in; ``after_step:N`` once step N is done.
``SND_TRAIN_TEST_DUMP_RANKS``: every process writes its final student weights to
``output_dir/rank{i}_state.safetensors``. The faults are callbacks of snd_hf.training.loop.train:
the loop holds no test code.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

from safetensors.torch import save_file

from snd_hf.cli import USER_ERRORS, run_with_errors
from snd_hf.training.guards import NonFiniteError
from snd_hf.training.loop import TrainingCallback

TRAIN = Path(__file__).resolve().parents[2] / "training" / "train.py"


class Kill(TrainingCallback):
    """SIGKILL the process at one event of one step."""

    def __init__(self, event: str, step: int):
        self.event, self.step = event, step

    def _maybe_kill(self, event: str, step: int) -> None:
        if event == self.event and step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_step_end(self, step):
        self._maybe_kill("after_step", step)

    def on_checkpoint_written(self, step, folder):
        self._maybe_kill("during_save", step)

    def on_export_written(self, step, folder):
        self._maybe_kill("during_export", step)


class DumpRanks(TrainingCallback):
    """Every process saves its student's final weights beside the run."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir

    def on_train_end(self, accelerator, student):
        state = {name: value.detach().cpu().contiguous() for name, value in student.state_dict().items()}
        save_file(state, self.output_dir / f"rank{accelerator.process_index}_state.safetensors")


def callbacks_from_environment(argv: list[str]) -> list[TrainingCallback]:
    callbacks: list[TrainingCallback] = []
    if kill := os.environ.get("SND_TRAIN_TEST_KILL"):
        event, _, step = kill.partition(":")
        callbacks.append(Kill(event, int(step)))
    if os.environ.get("SND_TRAIN_TEST_DUMP_RANKS"):
        callbacks.append(DumpRanks(Path(argv[argv.index("--output_dir") + 1])))
    return callbacks


if __name__ == "__main__":
    spec = importlib.util.spec_from_file_location("train", TRAIN)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    argv = sys.argv[1:]
    sys.exit(
        run_with_errors(
            lambda arguments: train.main(arguments, callbacks_from_environment(arguments)),
            argv,
            prog="train.py",
            errors=(*USER_ERRORS, NonFiniteError),
        )
    )
