"""Non-finite losses and gradients: detected at their step, named by sample, never applied."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator

from snd_hf.data.scenes import SceneDataset, collate_scenes
from snd_hf.data.synthetic import ensure_synthetic_scenes
from snd_hf.splatting.teacher import TeacherTargets
from snd_hf.training import TrainingConfig
from snd_hf.training.builders import build_student
from snd_hf.training.guards import (
    NonFiniteError,
    NonFiniteGuard,
    check_finite_weights,
    describe_samples,
)
from snd_hf.training.step import student_loss

# The paper's objective: LoRA adapters and a DINO head.
CONFIG = TrainingConfig(
    init="random", finetune="lora", loss="dino_head",
    hidden_size=24, num_attention_heads=2, head_hidden_dim=16, head_bottleneck_dim=8, head_prototypes=16,
)  # fmt: skip


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> dict:
    """Two real samples of generated scenes, at the training image size."""
    root = ensure_synthetic_scenes(tmp_path_factory.mktemp("scenes") / "synthetic", num_scenes=2, num_frames=6, height=32, width=40, progress=False)
    dataset = SceneDataset(root, num_context=2, context_gap=4, num_targets=1, image_size=(28, 42))
    return collate_scenes([dataset[0], dataset[1]])


def _poisoned(batch: dict) -> dict:
    """The batch with one NaN pixel in the target image of its second sample."""
    target = {**batch["target"], "image": batch["target"]["image"].clone()}
    target["image"][1, 0, 0, 5, 7] = float("nan")
    return {**batch, "target": target}


def _step(guard: NonFiniteGuard, student, batch: dict) -> bool:
    """One optimizer step's forward/backward under the guard; whether its update is finite."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(*batch["target"]["image"].shape[:2], CONFIG.hidden_size, 2, 3, generator=generator)
    targets = TeacherTargets(features, torch.ones(*features.shape[:2], 2, 3, dtype=torch.bool))
    loss = student_loss(student, student, batch, targets, CONFIG).loss  # the student is its own teacher here
    loss.backward()
    guard.observe(loss, batch)
    finite = guard.update_is_finite(Accelerator(cpu=True), student.parameters())
    student.zero_grad()
    return finite


def test_one_nan_pixel_stops_the_run_naming_the_step_and_the_sample(batch):
    student = build_student(CONFIG)
    guard = NonFiniteGuard("stop", 0)
    assert _step(guard, student, batch) and not guard.step_failed
    guard.end_step(1)

    poisoned = _poisoned(batch)
    assert not _step(guard, student, poisoned) and guard.step_failed
    with pytest.raises(NonFiniteError) as caught:
        guard.end_step(2)
    message = str(caught.value)
    scene = batch["scene"][1]
    context, target = batch["index"]["context"][1].tolist(), batch["index"]["target"][1].tolist()
    assert "non-finite loss at step 2" in message
    assert f"scene {scene!r} (context frames {context}, target frames {target}; non-finite input: target image)" in message
    assert f"scene {batch['scene'][0]!r} (context frames {batch['index']['context'][0].tolist()}, target frames" in message
    assert message.count("non-finite input") == 1  # only the poisoned sample is blamed


def test_skip_drops_steps_up_to_the_bound_and_non_finite_gradients_count(batch):
    student = build_student(CONFIG)
    guard = NonFiniteGuard("skip", 1)
    assert not _step(guard, student, _poisoned(batch))
    guard.end_step(3)  # skipped, within the bound
    assert guard.skipped_steps == [3] and not guard.step_failed

    # A finite loss with a non-finite gradient (an inf weight the loss does not see as such).
    loss = student(batch["target"]["image"])[1].float().logsumexp(-1).mean()  # the head logits
    loss.backward()
    next(p for p in student.parameters() if p.requires_grad).grad[0].fill_(math.inf)
    guard.observe(loss, batch)
    assert math.isfinite(loss.item())
    assert not guard.update_is_finite(Accelerator(cpu=True), student.parameters())
    with pytest.raises(NonFiniteError, match=r"non-finite gradient at step 4.*2 steps were skipped \(\[3, 4\]\), more than max_skipped_steps \(1\)"):
        guard.end_step(4)


def test_weights_are_checked_before_anything_is_written(batch):
    student = build_student(CONFIG)
    check_finite_weights({"student": student}, 5)  # finite: no error
    name, param = next((n, p) for n, p in student.named_parameters() if "lora_A" in n)
    with torch.no_grad():
        param[0, 0] = math.inf
    with pytest.raises(NonFiniteError, match=f"the student weight '{name}' is not finite at step 5; nothing was saved"):
        check_finite_weights({"student": student}, 5)
    assert describe_samples(batch)[0].startswith(f"scene {batch['scene'][0]!r} (context frames")
