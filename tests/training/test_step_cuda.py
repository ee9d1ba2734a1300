"""The SnD step on a CUDA device: the same targets as on CPU, and a finite bf16 autocast step.

Each comparison's max error is recorded (``record_max_error``, tests/conftest.py) before it is
checked, so the GPU suite reports it even when it fails.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_step import _batch, _config

from snd_hf import SnDConfig, SnDModel
from snd_hf.splatting.lifters import DepthLifter
from snd_hf.splatting.teacher import SplatTeacher
from snd_hf.training import DINOHead
from snd_hf.training.step import student_loss, teacher_targets
from snd_hf.training.student import BackboneWithHead

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA step needs a CUDA device"),
]

DEVICE = "cuda"


def _on(device: str, value):
    """A scene batch (nested dicts and lists of tensors) on ``device``."""
    if isinstance(value, dict):
        return {key: _on(device, item) for key, item in value.items()}
    return value.to(device) if isinstance(value, torch.Tensor) else value


@pytest.fixture
def teacher() -> BackboneWithHead:
    torch.manual_seed(0)
    backbone = SnDModel(SnDConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, image_size=56)).eval()
    return BackboneWithHead(backbone, DINOHead(24, hidden_dim=16, bottleneck_dim=8, num_prototypes=32)).eval()


@pytest.mark.parametrize("upsample", ["patch_aligned", "original"])
def test_teacher_targets_on_cuda_match_cpu(teacher, upsample, record_max_error):
    batch, config = _batch(targets=2), _config()
    # The CPU reference is the torch twin; on CUDA the splatting teacher renders with gsplat ("auto").
    targets = {}
    for device in ("cpu", DEVICE):
        splat = SplatTeacher(DepthLifter(), blending=0.5, upsample=upsample).to(device)
        targets[device] = teacher_targets(copy.deepcopy(teacher).to(device), splat, _on(device, batch), config)
    cpu, cuda = targets["cpu"], targets[DEVICE]
    _, relative = record_max_error("features", cuda.features, cpu.features)
    assert relative < 1e-3
    record_max_error("coverage", cuda.coverage.float(), cpu.coverage.float())  # 1 if any token differs
    assert torch.equal(cuda.coverage.cpu(), cpu.coverage)


def test_bf16_autocast_step_is_finite_and_near_float32(teacher, record_max_error):
    batch, config = _on(DEVICE, _batch(targets=2)), _config(loss="dino_head", mixed_precision="bf16")
    teacher = teacher.to(DEVICE)
    splat = SplatTeacher(DepthLifter(), blending=0.5).to(DEVICE)
    losses, gradients = {}, {}
    for precision in ("float32", "bf16"):
        student = copy.deepcopy(teacher).train()
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=precision == "bf16"):
            targets = teacher_targets(teacher, splat, batch, config)
            loss = student_loss(student, teacher, batch, targets, config).loss
        loss.backward()
        losses[precision] = loss.detach().float()
        gradients[precision] = torch.cat([p.grad.flatten().float() for p in student.parameters() if p.grad is not None])
    assert torch.isfinite(losses["bf16"]) and torch.isfinite(gradients["bf16"]).all()
    assert gradients["bf16"].abs().sum() > 0
    _, loss_error = record_max_error("bf16 loss vs float32", losses["bf16"], losses["float32"])
    record_max_error("bf16 gradients vs float32", gradients["bf16"], gradients["float32"])
    assert loss_error < 0.05  # bf16 keeps 8 bits of mantissa: a few parts in a thousand per operation
