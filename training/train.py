"""Train SnD: distil the teacher's context-view features, splatted into a target view, into a ViT student.

Launch (defaults: the CPU recipe of training/configs/synthetic_tiny.yaml; docs/snd_effect.md gives
its results against geometry-free controls):

    python training/train.py
    python training/train.py --max_steps 20 --output_dir outputs/quick
    accelerate launch training/train.py --config training/configs/scannetpp_vits14.yaml \
        --dataset_path /data/scannetpp --model_path dinov2_vits14_pretrain.pth \
        --mvsplat_checkpoint re10k.ckpt
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 training/train.py
    python training/train.py --resume_from_checkpoint latest            # after a crash or kill
    python training/train.py --overwrite_output_dir                     # start again in a used output_dir
    python training/train.py --push_to_hub --hub_model_id me/snd-tiny --output_dir outputs/pushed
    python training/train.py --help                                     # every key, its default and meaning

The loop itself is ``snd_hf.training.loop.train`` (benchmarks/bench_snd_effect.py trains every
run through it too); this script is its command line. Every key of snd_hf.training.TrainingConfig can be set in the YAML file or as ``--key value``.
On a CPU, torch runs on one thread (``CPU_THREADS``) unless ``OMP_NUM_THREADS`` says otherwise,
as training/pretrain_2d.py does: the weights depend on the thread count, and the default's are those
of ``OMP_NUM_THREADS=1`` bit for bit. ``--help`` and a bad command line answer before torch loads.
The start line lists the keys the command line changed from the config file (``--config``).
Before anything is generated or built, the run is checked (snd_hf.training.preflight): unknown
keys, missing paths, a non-empty ``output_dir`` without ``--resume_from_checkpoint`` or
``--overwrite_output_dir``, a synthetic ``dataset_path`` holding data the package did not
generate, and, with ``--push_to_hub``, the Hub's reachability, the token and the repository. Mixed
precision, gradient accumulation and multi-process training come from accelerate (``accelerate
config`` or launch flags; ``--mixed_precision`` and ``--gradient_accumulation_steps`` here).

A NaN or inf loss or gradient stops the run at that step, naming its samples, before anything of
it is applied or saved (``--on_nonfinite skip`` drops such steps instead, at most
``max_skipped_steps``). docs/reliability.md lists what the trainer guarantees.

Outputs in ``output_dir``: the final student as a native SnD directory (``SnDModel.from_pretrained``
/ ``AutoModel.from_pretrained`` load it), ``teacher/`` (the EMA teacher, or the unchanged start with
``teacher_mode: frozen``; same format),
``student_original.pth`` / ``teacher_original.pth`` (LoRA merged, torch.hub DINOv2 key layout),
``export.json`` (the step and files of that export, which is moved in as one set; ``snd_run.json``
lists its files), ``losses.jsonl`` (one line per optimizer step, also after a resume: loss, lr and the collapse
diagnostics of snd_hf/training/diagnostics.py, which warn once when the run collapses),
``config.yaml``, and ``checkpoints/step_{n}`` (the full training state as safetensors + JSON, no
pickle: resumable).

The embedded default checkpoint of ``snd demo`` (``snd_hf/assets/default/``) is the default run's
final student (its start, ``snd_hf/assets/pretrained_2d/``, comes from training/pretrain_2d.py):

    OMP_NUM_THREADS=1 python training/train.py && cp outputs/snd-synthetic-tiny/{config.json,model.safetensors,preprocessor_config.json} snd_hf/assets/default/
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from snd_hf.cli import USER_ERRORS, run_with_errors
from snd_hf.training.config import TrainingArgumentParser

if TYPE_CHECKING:
    from snd_hf.training.loop import TrainingCallback

# torch threads on a CPU device unless OMP_NUM_THREADS says otherwise: the default run's ops are too
# small to gain from threads, waiting threads cost more on a shared CPU, and the weights depend on
# the count (the order of float sums). Its packaged weights were made with this count.
CPU_THREADS = 1


def main(argv: list[str] | None = None, callbacks: Sequence[TrainingCallback] = ()) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config_dir = Path(__file__).parent / "configs"
    parser = TrainingArgumentParser(description=__doc__.splitlines()[0], config_dir=config_dir)
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return 0
    config, recipe = parser.parse_with_recipe(argv)
    config.validate()  # the config's values and paths
    # torch loads only now: --help and a bad command line answer without it.
    import torch

    from snd_hf.training.loop import make_accelerator, train
    from snd_hf.training.preflight import check_before_compute

    check_before_compute(config)  # output_dir, dataset_path, schedule, Hub access: before any compute
    accelerator = make_accelerator(config)
    if accelerator.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(CPU_THREADS)
    train(config, accelerator, callbacks, recipe=recipe)
    return 0


if __name__ == "__main__":
    # Expected errors (bad settings or paths, the Hub, a non-finite step) are one line; --debug for tracebacks.
    sys.exit(run_with_errors(main, prog="train.py", errors=(*USER_ERRORS, "snd_hf.training.guards.NonFiniteError")))
