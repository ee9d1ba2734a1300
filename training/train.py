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

Every key of snd_hf.training.TrainingConfig can be set in the YAML file or as ``--key value``.
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
``export.json`` (the step and files of that export, which is swapped in as one set),
``losses.jsonl`` (one line per optimizer step, also after a resume: loss, lr and the collapse
diagnostics of snd_hf/training/diagnostics.py, which warn once when the run collapses),
``config.yaml``, and ``checkpoints/step_{n}`` (the full training state as safetensors + JSON, no
pickle: resumable).

The embedded default checkpoint of ``snd demo`` (``snd_hf/assets/default/``) is the default run's
final student (its start, ``snd_hf/assets/pretrained_2d/``, comes from training/pretrain_2d.py):

    OMP_NUM_THREADS=1 python training/train.py && cp outputs/snd-synthetic-tiny/{config.json,model.safetensors,preprocessor_config.json} snd_hf/assets/default/
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from safetensors.torch import save_file
from tqdm.auto import tqdm

from snd_hf.cli import USER_ERRORS, run_with_errors
from snd_hf.data.scenes import collate_scenes
from snd_hf.training import ParameterEMA, TrainingConfig, make_ema_teacher
from snd_hf.training.builders import (
    build_dataset,
    build_optimizer,
    build_splat_teacher,
    build_student,
    prepare_scenes,
)
from snd_hf.training.checkpoints import (
    finalize_checkpoint,
    load_training_state,
    resolve_checkpoint,
    save_training_state,
    temporary_checkpoint_dir,
    temporary_checkpoint_path,
)
from snd_hf.training.diagnostics import CollapseMonitor, step_diagnostics
from snd_hf.training.export import save_native, save_original
from snd_hf.training.guards import NonFiniteError, NonFiniteGuard, check_finite_weights
from snd_hf.training.operator_cache import OperatorCache
from snd_hf.training.outputs import (
    LOSS_LOG,
    LossLog,
    prepare_output_dir,
    write_final_export,
)
from snd_hf.training.preflight import check_before_compute, cpu_contention
from snd_hf.training.resume import write_run_config
from snd_hf.training.push import push_final_model
from snd_hf.training.schedule import one_cycle_schedule
from snd_hf.training.step import student_loss, teacher_targets
from snd_hf.training.usage import training_help

# Test-only: "after_step:N" SIGKILLs the process once step N is logged; "during_save:N" SIGKILLs it
# after the checkpoint of step N is written but before it is renamed into place; "during_export:N"
# SIGKILLs it once the final export of step N is written but before it is swapped in.
KILL_ENV = "SND_TRAIN_TEST_KILL"
# Test-only: every process writes its final student weights to output_dir/rank{i}_state.safetensors.
DUMP_RANKS_ENV = "SND_TRAIN_TEST_DUMP_RANKS"


def training_function(config: TrainingConfig) -> None:
    # ---------------------------------------------------------------------------------------------
    # Setup
    # ---------------------------------------------------------------------------------------------
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # The shuffle order depends only on (seed, epoch): a resumed run sees the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
    )
    set_seed(config.seed)
    if accelerator.is_main_process:  # a killed run's temporaries; --overwrite_output_dir
        for note in prepare_output_dir(output_dir, overwrite=config.overwrite_output_dir):
            accelerator.print(note)
        write_run_config(config)  # config.yaml; a resume records the settings it changed
    accelerator.wait_for_everyone()
    accelerator.print(f"SnD training on {accelerator.num_processes} process(es), {accelerator.device}:\n{config.to_yaml()}")
    if contention := cpu_contention(accelerator.device.type):
        accelerator.print(f"warning: {contention}")

    # ---------------------------------------------------------------------------------------------
    # Data
    # ---------------------------------------------------------------------------------------------
    with accelerator.main_process_first():  # synthetic scenes: one process generates, the others reuse
        root = prepare_scenes(config, progress=accelerator.is_main_process)
    dataset = build_dataset(config, root)
    dataloader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=config.num_workers,
        collate_fn=collate_scenes,
        # Its own generator, so creating an iterator never draws from the global RNG (which
        # drives dropout): a resumed run then consumes random numbers exactly as an uninterrupted one.
        generator=torch.Generator().manual_seed(config.seed),
    )

    # ---------------------------------------------------------------------------------------------
    # Model: student (LoRA or full fine-tuning) [+ DINO head]; teacher = EMA or frozen copy; frozen lifter
    # ---------------------------------------------------------------------------------------------
    student = build_student(config)
    teacher = make_ema_teacher(student)  # heads included: the teacher head starts as the student's
    splat_teacher = build_splat_teacher(config)
    # The lifter is frozen, so each sample's context→target map can be built once and reused.
    operators = OperatorCache(splat_teacher, config.operator_cache_mb * 2**20) if config.cache_operator else None
    num_trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    accelerator.print(f"trainable parameters: {num_trainable:,} of {sum(p.numel() for p in student.parameters()):,}")

    # ---------------------------------------------------------------------------------------------
    # Optimizer (AdamW; with weight_decay 0 it is the original's Adam) and one-cycle cosine schedule
    # ---------------------------------------------------------------------------------------------
    optimizer = build_optimizer(config, student)
    # The original's OneCycleLR over max_steps + 10, as a function of the optimizer step: not
    # prepared by accelerate (which would step it once per process), stepped by the loop below.
    scheduler = one_cycle_schedule(optimizer, config.max_steps, config.warmup_ratio)
    # NaN/inf: fp16's grad scaler skips overflowing steps itself, so only losses are checked then.
    guard = NonFiniteGuard(config.on_nonfinite, config.max_skipped_steps, check_gradients=config.mixed_precision != "fp16")

    # ---------------------------------------------------------------------------------------------
    # Wrap: one prepare call; the EMA teacher travels in the checkpoints
    # ---------------------------------------------------------------------------------------------
    student, optimizer, dataloader = accelerator.prepare(student, optimizer, dataloader)
    teacher.to(accelerator.device)
    splat_teacher.to(accelerator.device)
    ema = ParameterEMA(teacher, accelerator.unwrap_model(student))  # pairs the parameters once, on their device
    if config.report_to != "none":
        accelerator.init_trackers("snd", config={k: str(v) if isinstance(v, list) else v for k, v in config.to_dict().items()})

    # ---------------------------------------------------------------------------------------------
    # Resume: same step, data order, RNG, optimizer, scheduler and EMA state
    # ---------------------------------------------------------------------------------------------
    global_step = 0
    modules = {"student": accelerator.unwrap_model(student), "teacher": teacher}  # what checkpoints hold
    if config.resume_from_checkpoint:
        checkpoint = resolve_checkpoint(output_dir, config.resume_from_checkpoint)
        if checkpoint is None:
            accelerator.print(f"no complete checkpoint in {output_dir / 'checkpoints'}: starting from scratch")
        else:  # safetensors + JSON only: nothing in a checkpoint folder is unpickled
            state = load_training_state(
                checkpoint, modules=modules, optimizer=optimizer, scheduler=scheduler,
                scaler=accelerator.scaler, process_index=accelerator.process_index,
            )  # fmt: skip
            global_step = state["step"]
            accelerator.step, guard.skipped_steps = state.get("accelerator_step", 0), state.get("skipped_steps", [])
            accelerator.print(f"resumed from {checkpoint} at step {global_step}")

    # ---------------------------------------------------------------------------------------------
    # Helpers used by the loop
    # ---------------------------------------------------------------------------------------------
    kill_event, _, kill_step = os.environ.get(KILL_ENV, "").partition(":")

    def training_info(step: int, role: str) -> dict:
        return {"role": role, "step": step, "config": config.to_dict()}

    def export(directory: Path, step: int) -> None:
        """Native student (in ``directory``) and teacher (``directory/teacher``) + original-layout .pth."""
        variant = {"size": config.size, "blending": config.blending < 1.0}
        student_backbone = accelerator.unwrap_model(student).backbone
        save_native(student_backbone, directory, training_info=training_info(step, "student"), **variant)
        save_native(teacher.backbone, directory / "teacher", training_info=training_info(step, "teacher"), **variant)
        save_original(student_backbone, directory / "student_original.pth")
        save_original(teacher.backbone, directory / "teacher_original.pth")

    def save_checkpoint(step: int) -> None:
        """Full state into a temporary folder, renamed to checkpoints/step_{step} once complete."""
        check_finite_weights(modules, step)  # nothing non-finite is ever written
        if accelerator.is_main_process:
            temporary_checkpoint_dir(output_dir, step)  # clears the leftovers of a killed save
        accelerator.wait_for_everyone()
        tmp = temporary_checkpoint_path(output_dir, step)
        save_training_state(
            tmp, modules=modules, optimizer=optimizer, scheduler=scheduler, scaler=accelerator.scaler,
            trainer_state={"step": step, "accelerator_step": accelerator.step, "skipped_steps": guard.skipped_steps},
            process_index=accelerator.process_index, is_main_process=accelerator.is_main_process,
        )  # fmt: skip
        accelerator.wait_for_everyone()  # every process's RNG state is in before the rename
        if accelerator.is_main_process:
            export(tmp / "export", step)
            if kill_event == "during_save" and int(kill_step) == step:
                os.kill(os.getpid(), signal.SIGKILL)
            finalize_checkpoint(tmp, config.checkpoints_total_limit)
        accelerator.wait_for_everyone()

    # One line per step: a resumed run drops the lines its killed predecessor wrote after the checkpoint.
    loss_log = LossLog(output_dir / LOSS_LOG, start_step=global_step) if accelerator.is_main_process else None
    accumulation = config.gradient_accumulation_steps
    batches_per_epoch = len(dataloader)
    if batches_per_epoch < accumulation:
        raise ValueError(
            f"an epoch has {batches_per_epoch} batch(es) per process, fewer than gradient_accumulation_steps "
            f"({accumulation}): generate more scenes or lower batch_size."
        )
    steps_per_epoch = batches_per_epoch // accumulation
    epoch, skip_steps = divmod(global_step, steps_per_epoch)
    monitor = CollapseMonitor(config.head_prototypes if config.loss == "dino_head" else None)
    progress = tqdm(
        total=config.max_steps, initial=global_step, desc="train", disable=not accelerator.is_local_main_process
    )

    # ---------------------------------------------------------------------------------------------
    # Loop
    # ---------------------------------------------------------------------------------------------
    student.train()
    while global_step < config.max_steps:
        dataloader.set_epoch(epoch)
        dataset.set_epoch(epoch)
        # Whole optimizer steps only: a partial accumulation group at the end of an epoch is dropped.
        batches = accelerator.skip_first_batches(dataloader, skip_steps * accumulation) if skip_steps else dataloader
        skip_steps, micro_step, tick = 0, 0, time.perf_counter()
        for batch in batches:
            if micro_step == steps_per_epoch * accumulation:
                break
            micro_step += 1

            # Teacher: its tokens of the context views → lift, splat, blend into the target views.
            with accelerator.autocast():
                targets = teacher_targets(teacher, splat_teacher, batch, config, operators)  # [B, Vt, C, h, w]

            with accelerator.accumulate(student):
                # Student: its own tokens of the target views against the targets.
                outputs = student_loss(student, teacher, batch, targets, config, global_step)
                loss = outputs.loss
                lr = scheduler.get_last_lr()[0]  # the rate this step uses
                accelerator.backward(loss)
                guard.observe(loss, batch)
                # At accumulation boundaries: clipping and the optimizer step, unless a loss or
                # gradient of this step (on any process) is not finite; the schedule always moves on.
                if accelerator.sync_gradients:
                    if guard.update_is_finite(accelerator, student.parameters()):
                        if config.max_grad_norm is not None:
                            accelerator.clip_grad_norm_(student.parameters(), config.max_grad_norm)
                        optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)

            if not accelerator.sync_gradients:
                continue
            global_step += 1

            # EMA teacher, after the optimizer step. Deviation: the original updates the teacher
            # in on_after_backward, before that step's optimizer step (one step staler).
            # Deviation (objective, optional): teacher_mode "frozen" never updates it.
            if config.teacher_mode == "ema" and global_step % config.ema_every == 0 and not guard.step_failed:
                ema.update(config.ema_momentum)

            # Logging: .item() forces a sync, so losses are gathered only every log_steps.
            if global_step % config.log_steps == 0 or global_step == config.max_steps:
                mean_loss = accelerator.reduce(loss.detach(), reduction="mean").item()
                # Target views: the images the student trains on (batch_size samples x num_targets).
                images_per_s = accelerator.num_processes * config.batch_size * config.num_targets * accumulation * micro_step / (
                    time.perf_counter() - tick
                )
                # Collapse diagnostics (entropies, prototypes, effective ranks, coverage): warn once.
                diagnostics = step_diagnostics(outputs.coverage, outputs.student_features, outputs.target_features, outputs.teacher_probs)
                monitor.update(global_step, diagnostics)
                if loss_log is not None:
                    loss_log.write(global_step, loss=mean_loss, lr=lr, **diagnostics)
                progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
                accelerator.log({"loss": mean_loss, "lr": lr, "images_per_s": images_per_s, **diagnostics}, step=global_step)
            guard.end_step(global_step)  # NonFiniteError: stop here, before anything is saved
            progress.update(1)

            if global_step % config.save_steps == 0 or global_step == config.max_steps:
                save_checkpoint(global_step)
            if kill_event == "after_step" and int(kill_step) == global_step:
                os.kill(os.getpid(), signal.SIGKILL)
            if global_step >= config.max_steps:
                break
        epoch += 1
    progress.close()

    # ---------------------------------------------------------------------------------------------
    # Final outputs: native student (+ teacher) in output_dir, optional push to the Hub
    # ---------------------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    if os.environ.get(DUMP_RANKS_ENV):
        state = {k: v.detach().cpu().contiguous() for k, v in accelerator.unwrap_model(student).state_dict().items()}
        save_file(state, output_dir / f"rank{accelerator.process_index}_state.safetensors")
    if accelerator.is_main_process:
        loss_log.close()
        check_finite_weights(modules, global_step)

        def write_final(folder: Path) -> None:
            export(folder, global_step)
            if kill_event == "during_export" and int(kill_step) == global_step:
                os.kill(os.getpid(), signal.SIGKILL)

        # Written completely beside output_dir's contents, then swapped in as one set.
        write_final_export(output_dir, write_final, step=global_step)
        if config.push_to_hub:
            push_final_model(output_dir, config.hub_model_id, training_config=config.to_dict(), step=global_step)
    accelerator.end_training()
    accelerator.print(f"done: {global_step} steps, model in {output_dir}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config_dir = Path(__file__).parent / "configs"
    if "-h" in argv or "--help" in argv:
        print(training_help(description=__doc__.splitlines()[0], config_dir=config_dir), end="")
        return 0
    config = TrainingConfig.from_args(argv, config_dir=config_dir)
    config.validate()  # the config's values and paths
    check_before_compute(config)  # output_dir, dataset_path, schedule, Hub access: before any compute
    training_function(config)
    return 0


if __name__ == "__main__":
    # Expected errors (bad settings or paths, the Hub, a non-finite step) are one line; --debug for tracebacks.
    sys.exit(run_with_errors(main, prog="train.py", errors=(*USER_ERRORS, NonFiniteError)))
