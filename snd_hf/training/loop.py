"""The SnD training loop: ``train(config)``, which ``training/train.py`` and the benchmarks run.

Read top to bottom like accelerate's examples and nanoGPT's ``train.py``: setup → data → model
→ optimizer → one ``accelerator.prepare`` call → resume → loop → final export. Tests and tools
hook in through :class:`TrainingCallback` (fault injection, weight dumps) instead of code in the
loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from ..data.scenes import collate_scenes
from ..splatting.teacher import OperatorCache
from .builders import build_dataset, build_optimizer, build_student, build_target_renderer, prepare_scenes
from .checkpoints import (
    finalize_checkpoint,
    load_training_state,
    resolve_checkpoint,
    save_training_state,
    temporary_checkpoint_dir,
    temporary_checkpoint_path,
)
from .config import TrainingConfig
from .diagnostics import CollapseMonitor, step_diagnostics
from .ema import ParameterEMA, make_ema_teacher
from .export import save_native, save_original
from .guards import NonFiniteGuard, check_finite_weights
from .outputs import LOSS_LOG, LossLog, prepare_output_dir, write_final_export
from .preflight import cpu_contention
from .push import push_final_model
from .resume import write_run_config
from .schedule import one_cycle_schedule
from .step import student_loss, teacher_targets

__all__ = ["TrainingCallback", "make_accelerator", "train"]


class TrainingCallback:
    """Hooks of :func:`train` (as transformers' ``TrainerCallback``); each does nothing unless overridden."""

    def on_step_end(self, step: int) -> None:
        """Optimizer step ``step`` is done, logged and (when due) checkpointed. Every process."""

    def on_checkpoint_written(self, step: int, folder: Path) -> None:
        """The checkpoint of ``step`` is complete in its temporary ``folder`` and not yet renamed into place. Main process."""

    def on_export_written(self, step: int, folder: Path) -> None:
        """The final export is complete in ``folder`` and not yet swapped into ``output_dir``. Main process."""

    def on_train_end(self, accelerator: Accelerator, student: torch.nn.Module) -> None:
        """The loop is over on every process (before the final export); ``student`` is unwrapped. Every process."""


def changed_settings(config: TrainingConfig, recipe: Path | None = None) -> str:
    """``changed from RECIPE: key=value, ...`` (``none`` when nothing is): the keys of ``config``
    whose values differ from the config file ``recipe`` (from :class:`TrainingConfig`'s defaults
    when None), for the start line of a run."""
    baseline = TrainingConfig() if recipe is None else TrainingConfig.from_yaml(recipe)
    changed = ", ".join(f"{key}={value}" for key, value in config.to_dict().items() if value != getattr(baseline, key))
    return f"changed from {recipe or 'the TrainingConfig defaults'}: {changed or 'none'}"


def make_accelerator(config: TrainingConfig) -> Accelerator:
    """The accelerator of a run: mixed precision, accumulation, trackers and a seedable data order from ``config``."""
    output_dir = Path(config.output_dir)
    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # The shuffle order depends only on (seed, epoch): a resumed run sees the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
    )


def train(
    config: TrainingConfig,
    accelerator: Accelerator | None = None,
    callbacks: Sequence[TrainingCallback] = (),
    recipe: Path | None = None,
) -> Path:
    """Train SnD as ``config`` says and write the run to ``config.output_dir``.

    The config is taken as checked (``TrainingConfig.validate`` and
    ``snd_hf.training.preflight.check_before_compute``; training/train.py runs both). Outputs:
    see training/train.py's docstring.

    Args:
        config: the run.
        accelerator: made by :func:`make_accelerator` when None.
        callbacks: hooks called at the points :class:`TrainingCallback` names.
        recipe: the config file the run starts from; the start line lists the keys whose values
            differ from it (from :class:`TrainingConfig`'s defaults when None).

    Returns:
        ``output_dir``, holding the final student (``SnDModel.from_pretrained`` loads it).

    Raises:
        NonFiniteError: a NaN or inf loss or gradient (``on_nonfinite: stop``), before anything of
            that step is applied or saved.
    """
    # ---------------------------------------------------------------------------------------------
    # Setup
    # ---------------------------------------------------------------------------------------------
    output_dir = Path(config.output_dir)
    accelerator = make_accelerator(config) if accelerator is None else accelerator
    set_seed(config.seed)
    if accelerator.is_main_process:  # a killed run's temporaries; --overwrite_output_dir
        for note in prepare_output_dir(output_dir, overwrite=config.overwrite_output_dir):
            accelerator.print(note)
        write_run_config(config)  # config.yaml; a resume records the settings it changed
    accelerator.wait_for_everyone()
    # The whole configuration is in config.yaml; the terminal shows what differs from the recipe run.
    threads = f" ({torch.get_num_threads()} torch thread(s))" if accelerator.device.type == "cpu" else ""
    accelerator.print(
        f"SnD training on {accelerator.num_processes} process(es), {accelerator.device}{threads}; settings in"
        f" {output_dir / 'config.yaml'}; {changed_settings(config, recipe)}"
    )
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
    ema_teacher = make_ema_teacher(student)  # heads included: the teacher head starts as the student's
    target_renderer = build_target_renderer(config, student.backbone.config.patch_size)
    # The lifter is frozen, so each sample's context→target map can be built once and reused.
    operators = OperatorCache(target_renderer, config.operator_cache_mb * 2**20) if config.cache_operator else None
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
    ema_teacher.to(accelerator.device)
    target_renderer.to(accelerator.device)
    ema = ParameterEMA(ema_teacher, accelerator.unwrap_model(student))  # pairs the parameters once, on their device
    if config.report_to != "none":
        accelerator.init_trackers("snd", config={k: str(v) if isinstance(v, list) else v for k, v in config.to_dict().items()})

    # ---------------------------------------------------------------------------------------------
    # Resume: same step, data order, RNG, optimizer, scheduler and EMA state
    # ---------------------------------------------------------------------------------------------
    global_step = 0
    modules = {"student": accelerator.unwrap_model(student), "teacher": ema_teacher}  # what checkpoints hold
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
    def training_info(step: int, role: str) -> dict:
        return {"role": role, "step": step, "config": config.to_dict()}

    def export(directory: Path, step: int) -> None:
        """Native student (in ``directory``) and teacher (``directory/teacher``) + original-layout .pth."""
        variant = {"size": config.size, "blending": config.segment_mean_weight > 0, "image_size": tuple(config.image_size)}
        student_backbone = accelerator.unwrap_model(student).backbone
        save_native(student_backbone, directory, training_info=training_info(step, "student"), **variant)
        save_native(ema_teacher.backbone, directory / "teacher", training_info=training_info(step, "teacher"), **variant)
        save_original(student_backbone, directory / "student_original.pth")
        save_original(ema_teacher.backbone, directory / "teacher_original.pth")

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
            for callback in callbacks:
                callback.on_checkpoint_written(step, tmp)
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
                targets = teacher_targets(ema_teacher, target_renderer, batch, config, operators)  # [B, Vt, C, h, w]

            with accelerator.accumulate(student):
                # Student: its own tokens of the target views against the targets.
                outputs = student_loss(student, ema_teacher, batch, targets, config, global_step)
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
            for callback in callbacks:
                callback.on_step_end(global_step)
            if global_step >= config.max_steps:
                break
        epoch += 1
    progress.close()

    # ---------------------------------------------------------------------------------------------
    # Final outputs: native student (+ teacher) in output_dir, optional push to the Hub
    # ---------------------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    for callback in callbacks:
        callback.on_train_end(accelerator, accelerator.unwrap_model(student))
    if accelerator.is_main_process:
        loss_log.close()
        check_finite_weights(modules, global_step)

        def write_final(folder: Path) -> None:
            export(folder, global_step)
            for callback in callbacks:
                callback.on_export_written(global_step, folder)

        # Written completely beside output_dir's contents, then swapped in as one set.
        write_final_export(output_dir, write_final, step=global_step)
        if config.push_to_hub:
            push_final_model(output_dir, config.hub_model_id, training_config=config.to_dict(), step=global_step)
    accelerator.end_training()
    accelerator.print(f"done: {global_step} steps, model in {output_dir}")
    return output_dir
