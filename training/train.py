"""Train SnD: distil splatted, blended teacher features of context views into a DINOv2 student.

Launch (defaults: the CPU recipe of training/configs/synthetic_tiny.yaml, which shows the SnD
effect; see docs/snd_effect.md for its time and results):

    python training/train.py
    python training/train.py --max_steps 20 --output_dir outputs/quick
    accelerate launch training/train.py --config training/configs/scannetpp_vits14.yaml \
        --dataset_path /data/scannetpp --model_path dinov2_vits14_pretrain.pth \
        --mvsplat_checkpoint re10k.ckpt
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 training/train.py
    python training/train.py --resume_from_checkpoint latest            # after a crash or kill
    python training/train.py --push_to_hub --hub_model_id me/snd-tiny

Every key of snd_hf.training.TrainingConfig can be set in the YAML file or as ``--key value``;
unknown keys are rejected before anything runs. Mixed precision, gradient accumulation and
multi-process training come from accelerate (``accelerate config`` or launch flags;
``--mixed_precision`` and ``--gradient_accumulation_steps`` here).

Outputs in ``output_dir``: the final student as a native SnD directory (``SnDModel.from_pretrained``
/ ``AutoModel.from_pretrained`` load it), ``teacher/`` (the EMA teacher, same format),
``student_original.pth`` / ``teacher_original.pth`` (LoRA merged, torch.hub DINOv2 key layout),
``losses.jsonl`` (one line per optimizer step: loss, lr and the collapse diagnostics of
snd_hf/training/diagnostics.py, which warn once when the run collapses), ``config.yaml``, and
``checkpoints/step_{n}`` (full accelerate state: resumable).

The embedded default checkpoint of ``snd demo`` (``snd_hf/assets/default/``) is the default run's
final student (its start, ``snd_hf/assets/pretrained_2d/``, comes from training/pretrain_2d.py):

    OMP_NUM_THREADS=1 python training/train.py && cp outputs/snd-synthetic-tiny/{config.json,model.safetensors,preprocessor_config.json} snd_hf/assets/default/
"""

from __future__ import annotations

import json
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

from snd_hf import SnDConfig
from snd_hf.data.scenes import collate_scenes
from snd_hf.training import TrainingConfig, ema_update, make_ema_teacher
from snd_hf.training.builders import (
    build_dataset,
    build_optimizer,
    build_splat_teacher,
    build_student,
    prepare_scenes,
)
from snd_hf.training.checkpoints import (
    checkpoint_step,
    finalize_checkpoint,
    resolve_checkpoint,
    temporary_checkpoint_dir,
    temporary_checkpoint_path,
)
from snd_hf.training.diagnostics import CollapseMonitor, step_diagnostics
from snd_hf.training.export import save_native, save_original
from snd_hf.training.operator_cache import OperatorCache
from snd_hf.training.step import student_loss, teacher_targets

# Test-only: "after_step:N" SIGKILLs the process once step N is logged; "during_save:N" SIGKILLs it
# after the checkpoint of step N is written but before it is renamed into place.
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
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(config.to_yaml())
    accelerator.print(f"SnD training on {accelerator.num_processes} process(es), {accelerator.device}:\n{config.to_yaml()}")

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
    # accelerate steps a prepared scheduler once per process per optimizer step; the 10 spare
    # steps are the original's (OneCycleLR over max_steps + 10).
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.learning_rate,
        total_steps=(config.max_steps + 10) * accelerator.num_processes,
        pct_start=config.warmup_ratio,
        anneal_strategy="cos",
        cycle_momentum=False,
    )

    # ---------------------------------------------------------------------------------------------
    # Wrap: one prepare call; the EMA teacher travels in the checkpoints
    # ---------------------------------------------------------------------------------------------
    student, optimizer, dataloader, scheduler = accelerator.prepare(student, optimizer, dataloader, scheduler)
    teacher.to(accelerator.device)
    splat_teacher.to(accelerator.device)
    accelerator.register_for_checkpointing(teacher)
    if config.report_to != "none":
        accelerator.init_trackers("snd", config={k: str(v) if isinstance(v, list) else v for k, v in config.to_dict().items()})

    # ---------------------------------------------------------------------------------------------
    # Resume: same step, data order, RNG, optimizer, scheduler and EMA state
    # ---------------------------------------------------------------------------------------------
    global_step = 0
    if config.resume_from_checkpoint:
        checkpoint = resolve_checkpoint(output_dir, config.resume_from_checkpoint)
        if checkpoint is None:
            accelerator.print(f"no complete checkpoint in {output_dir / 'checkpoints'}: starting from scratch")
        else:
            accelerator.load_state(str(checkpoint))
            global_step = checkpoint_step(checkpoint)
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
        if accelerator.is_main_process:
            temporary_checkpoint_dir(output_dir, step)  # clears the leftovers of a killed save
        accelerator.wait_for_everyone()
        tmp = temporary_checkpoint_path(output_dir, step)
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            export(tmp / "export", step)
            if kill_event == "during_save" and int(kill_step) == step:
                os.kill(os.getpid(), signal.SIGKILL)
            finalize_checkpoint(tmp, config.checkpoints_total_limit)
        accelerator.wait_for_everyone()

    loss_log = open(output_dir / "losses.jsonl", "a") if accelerator.is_main_process else None
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
                # Backward, clipping, optimizer and schedule (accelerate skips them between
                # accumulation boundaries).
                lr = scheduler.get_last_lr()[0]  # the rate this step uses
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(student.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            if not accelerator.sync_gradients:
                continue
            global_step += 1

            # EMA teacher, after the optimizer step. Deviation: the original updates the teacher
            # in on_after_backward, before that step's optimizer step (one step staler).
            # Deviation (optional, docs/deviations.md 29): teacher_mode "frozen" never updates it.
            if config.teacher_mode == "ema" and global_step % config.ema_every == 0:
                ema_update(teacher, accelerator.unwrap_model(student), config.ema_momentum)

            # Logging: .item() forces a sync, so losses are gathered only every log_steps.
            if global_step % config.log_steps == 0 or global_step == config.max_steps:
                mean_loss = accelerator.reduce(loss.detach(), reduction="mean").item()
                images_per_s = accelerator.num_processes * config.batch_size * accumulation * micro_step / (
                    time.perf_counter() - tick
                )
                # Collapse diagnostics (entropies, prototypes, effective ranks, coverage): warn once.
                diagnostics = step_diagnostics(outputs.coverage, outputs.student_features, outputs.target_features, outputs.teacher_probs)
                monitor.update(global_step, diagnostics)
                if loss_log is not None:
                    loss_log.write(json.dumps({"step": global_step, "loss": mean_loss, "lr": lr, **diagnostics}) + "\n")
                    loss_log.flush()
                progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
                accelerator.log({"loss": mean_loss, "lr": lr, "images_per_s": images_per_s, **diagnostics}, step=global_step)
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
        export(output_dir, global_step)
        if config.push_to_hub:
            push_to_hub(config, output_dir, global_step)
    accelerator.end_training()
    accelerator.print(f"done: {global_step} steps, model in {output_dir}")


def push_to_hub(config: TrainingConfig, output_dir: Path, step: int) -> None:
    """Upload the final native student (config, weights, processor config) with a model card."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from snd_hf.model_card import build_model_card

    model_config = SnDConfig.from_pretrained(output_dir)
    card = build_model_card(model_config, training_config=config.to_dict(), steps=step, repo_id=config.hub_model_id)
    (output_dir / "README.md").write_text(card)
    # Only the final native student: not the checkpoints, logs or teacher around it.
    names = ["config.json", "model.safetensors", "preprocessor_config.json", "README.md"]
    api = HfApi()
    api.create_repo(config.hub_model_id, private=config.hub_private, exist_ok=True)
    api.create_commit(
        repo_id=config.hub_model_id,
        operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(output_dir / name)) for name in names],
        commit_message=f"SnD training, step {step}",
    )


def main(argv: list[str] | None = None) -> int:
    config = TrainingConfig.from_args(sys.argv[1:] if argv is None else argv, config_dir=Path(__file__).parent / "configs")
    config.validate()  # paths and combinations, before any compute
    training_function(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
