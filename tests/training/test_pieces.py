"""Unit tests of the training pieces: config, DINO head, EMA, loss, checkpoint folders."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import snd_hf.training.preflight as preflight

from snd_hf.training import (
    DINOHead,
    TrainingConfig,
    distillation_loss,
    ParameterEMA,
    ema_update,
    make_ema_teacher,
)
from snd_hf.training.checkpoints import (
    finalize_checkpoint,
    list_checkpoints,
    resolve_checkpoint,
    temporary_checkpoint_dir,
)
from snd_hf.training.config import parse_overrides
from snd_hf.training.loss import (
    cosine_loss,
    info_nce_loss,
    mse_loss,
    teacher_probabilities,
    teacher_temperature,
    update_center,
)
from snd_hf.training.preflight import cpu_contention


# --- config ---------------------------------------------------------------------------------------
def test_overrides_are_typed_and_bare_bool_flags_mean_true():
    path, overrides = parse_overrides(
        ["--config", "x.yaml", "--max_steps", "7", "--learning_rate=2e-5", "--push_to_hub", "--image_size", "[28,42]"]
    )
    assert path == "x.yaml"
    assert overrides == {"max_steps": 7, "learning_rate": "2e-5", "push_to_hub": True, "image_size": [28, 42]}
    assert TrainingConfig.from_dict(overrides).learning_rate == 2e-5


def test_every_shipped_config_loads_and_paper_values_are_kept():
    tiny = TrainingConfig.from_args([])
    assert tiny.dataset == "synthetic" and tiny.init == "pretrained_2d" and tiny.lifter == "depth"
    # The CPU recipe of docs/snd_effect.md.
    recipe = (tiny.loss, tiny.contrastive_temperature, tiny.teacher_mode, tiny.ema_momentum, tiny.ema_every, tiny.max_steps)
    assert recipe == ("info_nce", 0.2, "ema", 0.99, 1, 2000)
    assert (tiny.upsample, tiny.finetune, tiny.blending) == ("patch_aligned", "full", 1.0)
    assert (tiny.batch_size, tiny.num_targets, tiny.context_gap) == (2, 4, 4)  # 8 target views per step
    # The dataclass defaults are the tiny run's: the YAML only adds where its scenes are cached.
    assert tiny == TrainingConfig(dataset_path="data/synthetic-tiny")
    for name in ("scannetpp_vits14", "scannetpp_vitb14"):
        paper = TrainingConfig.from_args(["--config", name])
        assert (paper.learning_rate, paper.lora_r, paper.lora_alpha, paper.lora_dropout) == (2e-5, 8, 8.0, 0.1)
        assert (paper.head_hidden_dim, paper.head_bottleneck_dim, paper.head_prototypes) == (2048, 256, 65536)
        assert (paper.ema_momentum, paper.ema_every, paper.max_steps, paper.blending) == (0.999, 10, 300000, 0.5)
        assert (paper.near, paper.far) == (0.1, 20.0)
        # The paper's objective: DINO head, EMA teacher, LoRA, align-corners upsampling, no centring.
        assert (paper.loss, paper.teacher_mode, paper.finetune, paper.upsample, paper.targets) == (
            "dino_head", "ema", "lora", "original", "splat"
        )
        assert (paper.teacher_temp, paper.student_temp, paper.center_momentum, paper.teacher_temp_warmup) == (1.0, 1.0, None, None)
    assert TrainingConfig.from_args(["--config", "scannetpp_vitb14"]).size == "base"
    original = TrainingConfig.from_args(["--config", "scannetpp_vits14", "--near", "1", "--far", "100"])
    assert (original.near, original.far) == (1.0, 100.0)


def test_unknown_key_wrong_type_and_bad_choice_are_rejected():
    with pytest.raises(ValueError, match=r"Unknown training config key.*'max_step' \(did you mean 'max_steps'\?\) \(`python"):
        TrainingConfig.from_args(["--max_step", "3"])
    with pytest.raises(TypeError, match="max_steps must be int"):
        TrainingConfig.from_args(["--max_steps", "many"])
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        TrainingConfig.from_args(["--mixed_precision", "fp8"])


def test_required_paths_are_checked(tmp_path):
    paper = TrainingConfig.from_args(["--config", "scannetpp_vits14"])
    with pytest.raises(ValueError, match="dataset_path is required"):
        paper.validate()
    (tmp_path / "scenes").mkdir()
    paper = TrainingConfig.from_args(["--config", "scannetpp_vits14", "--dataset_path", str(tmp_path)])
    with pytest.raises(ValueError, match="mvsplat_checkpoint is required"):
        paper.validate()
    missing = TrainingConfig.from_args(
        ["--config", "scannetpp_vits14", "--dataset_path", str(tmp_path), "--mvsplat_checkpoint", "nope.ckpt"]
    )
    with pytest.raises(ValueError, match="mvsplat_checkpoint 'nope.ckpt' does not exist"):
        missing.validate()


def test_yaml_round_trip(tmp_path):
    config = TrainingConfig.from_args(["--max_steps", "9", "--max_grad_norm", "1"])
    path = tmp_path / "run.yaml"
    path.write_text(config.to_yaml())
    assert TrainingConfig.from_yaml(path) == config
    assert config.max_grad_norm == 1.0 and isinstance(config.max_grad_norm, float)


# --- DINO head ------------------------------------------------------------------------------------
def test_head_shapes_and_unit_prototypes():
    head = DINOHead(16, hidden_dim=32, bottleneck_dim=8, num_prototypes=20)
    logits = head(torch.randn(2, 3, 16))
    assert logits.shape == (2, 3, 20)
    # Cosine similarities between unit vectors: within [-1, 1]; rescaling prototypes changes nothing
    # (DINO's weight_g fixed at 1).
    features = torch.randn(4, 16)
    before = head(features)
    assert before.abs().max() <= 1.0 + 1e-6
    with torch.no_grad():
        head.prototypes.mul_(torch.rand(20, 1) * 5 + 0.1)
    torch.testing.assert_close(head(features), before)
    assert [type(m) for m in head.mlp] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    with pytest.raises(ValueError, match="16 channels"):
        head(torch.randn(4, 15))


# --- EMA ------------------------------------------------------------------------------------------
def test_ema_update_matches_formula_and_skips_frozen():
    student = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    student[0].requires_grad_(False)
    teacher = make_ema_teacher(student)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update(teacher, student, momentum=0.9)
    after = teacher.state_dict()
    torch.testing.assert_close(after["1.weight"], 0.9 * before["1.weight"] + 0.1 * student[1].weight)
    torch.testing.assert_close(after["0.weight"], before["0.weight"])  # frozen: untouched
    ema_update(teacher, student, momentum=0.0)
    torch.testing.assert_close(teacher[1].bias, student[1].bias)



def test_parameter_ema_follows_the_student_in_place_and_equals_ema_update():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    student[0].requires_grad_(False)
    paired, fresh = make_ema_teacher(student), make_ema_teacher(student)
    ema = ParameterEMA(paired, student)
    optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):  # the pairs see the student's in-place updates
        student(torch.randn(5, 3)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update(0.8)
        ema_update(fresh, student, 0.8)
    for name, value in fresh.state_dict().items():
        assert torch.equal(paired.state_dict()[name], value), name
    assert not torch.equal(paired[1].weight, student[1].weight)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        ema.update(1.5)
    with pytest.raises(ValueError, match="different dtypes or shapes"):
        ParameterEMA(make_ema_teacher(student).double(), student)
    with pytest.raises(ValueError, match="lacks the student's trained parameters"):
        ParameterEMA(nn.Sequential(nn.Linear(3, 4)), student)

# --- loss -----------------------------------------------------------------------------------------
def test_loss_is_cross_entropy_over_covered_tokens():
    student = torch.randn(2, 5, 7)
    teacher = torch.randn(2, 5, 7)
    covered = torch.tensor([[True, False, True, True, False], [False, False, True, False, False]])
    per_token = -(teacher.softmax(-1) * student.log_softmax(-1)).sum(-1)
    torch.testing.assert_close(distillation_loss(student, teacher, covered), per_token[covered].mean())
    torch.testing.assert_close(distillation_loss(student, teacher), per_token.mean())
    # Uniform student over K prototypes: the loss is ln K whatever the teacher says.
    assert math.isclose(distillation_loss(torch.zeros(3, 65536), teacher.new_zeros(3, 65536).normal_()).item(), math.log(65536), rel_tol=1e-6)
    nothing = distillation_loss(student.requires_grad_(), teacher, torch.zeros(2, 5, dtype=torch.bool))
    assert nothing.item() == 0.0
    nothing.backward()  # still attached to the graph
    assert torch.count_nonzero(student.grad) == 0


def test_cosine_and_mse_losses_over_covered_tokens():
    student, target = torch.randn(2, 1, 4, 3, 5), torch.randn(2, 1, 4, 3, 5)
    covered = torch.rand(2, 1, 3, 5) > 0.4
    cosine = 1 - torch.nn.functional.cosine_similarity(student, target, dim=2)
    torch.testing.assert_close(cosine_loss(student, target, covered), cosine[covered].mean())
    torch.testing.assert_close(mse_loss(student, target, covered), ((student - target) ** 2).mean(2)[covered].mean())
    assert cosine_loss(target * 3.0, target).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    with pytest.raises(ValueError, match="same shape"):
        cosine_loss(student, target[..., :4])


def test_info_nce_picks_each_token_target_among_the_covered():
    # Orthonormal targets and a student equal to them: every positive logit is 1/τ, every negative 0.
    target = torch.eye(6).view(1, 6, 6, 1, 1)  # [B, V, C, h, w]: view v's one token is e_v
    loss = info_nce_loss(target.clone(), target, temperature=0.5)
    assert loss.item() == pytest.approx(math.log(1 + 5 * math.exp(-2.0)), rel=1e-6)
    # Only covered tokens are queries and negatives: a direct sum over them.
    student, target = torch.randn(2, 1, 4, 3, 5), torch.randn(2, 1, 4, 3, 5)
    covered = torch.rand(2, 1, 3, 5) > 0.4
    queries = torch.nn.functional.normalize(student.movedim(2, -1)[covered], dim=-1)
    keys = torch.nn.functional.normalize(target.movedim(2, -1)[covered], dim=-1)
    logits = queries @ keys.T / 0.2
    expected = -torch.stack([logits[i].log_softmax(0)[i] for i in range(len(logits))]).mean()
    torch.testing.assert_close(info_nce_loss(student, target, covered), expected)
    # Nothing covered: 0, still in the graph.
    student.requires_grad_(True)
    empty = info_nce_loss(student, target, torch.zeros(2, 1, 3, 5, dtype=torch.bool))
    empty.backward()
    assert empty.item() == 0.0 and torch.count_nonzero(student.grad) == 0


def test_dino_centring_and_temperature_warm_up():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [9.0, 9.0, 9.0]])
    center = torch.zeros(3)
    update_center(center, logits, torch.tensor([True, True, False]), momentum=0.9)
    torch.testing.assert_close(center, 0.1 * torch.tensor([1.0, 1.0, 0.0]))  # the uncovered row is ignored
    probs = teacher_probabilities(logits[:1], 0.5, center)
    torch.testing.assert_close(probs, torch.softmax((logits[:1] - center) / 0.5, dim=-1))
    assert teacher_temperature(0, 0.07, 0.04, 30) == 0.04
    assert teacher_temperature(15, 0.07, 0.04, 30) == pytest.approx(0.055)
    assert teacher_temperature(30, 0.07, 0.04, 30) == teacher_temperature(5, 0.07, None, 30) == 0.07


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="covered must have shape"):
        distillation_loss(torch.randn(2, 3), torch.randn(2, 3), torch.ones(3, dtype=torch.bool))


# --- checkpoint folders ---------------------------------------------------------------------------
def test_latest_ignores_interrupted_saves_and_limit_prunes(tmp_path):
    assert resolve_checkpoint(tmp_path, "latest") is None
    for step in (10, 20, 30):
        tmp = temporary_checkpoint_dir(tmp_path, step)
        (tmp / "state.bin").write_bytes(b"x")
        finalize_checkpoint(tmp, total_limit=2)
    again = temporary_checkpoint_dir(tmp_path, 30)  # the same step saved again replaces it
    (again / "state.bin").write_bytes(b"y")
    finalize_checkpoint(again, total_limit=2)
    assert (tmp_path / "checkpoints" / "step_30" / "state.bin").read_bytes() == b"y"
    temporary_checkpoint_dir(tmp_path, 40)  # a save killed before its rename
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_20", "step_30"]
    assert resolve_checkpoint(tmp_path, "latest").name == "step_30"
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        resolve_checkpoint(tmp_path, str(tmp_path / "nope"))


# --- preflight ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("device", "threads", "load", "warned"),
    [("cpu", 2, 3.5, True), ("cpu", 2, 1.2, False), ("cpu", 1, 3.5, False), ("cuda", 2, 3.5, False)],
)
def test_cpu_contention_warns_only_for_several_threads_on_a_busy_cpu(device, threads, load, warned, monkeypatch):
    monkeypatch.setattr(preflight.os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(preflight.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(preflight.torch, "get_num_threads", lambda: threads)
    message = cpu_contention(device)
    if warned:
        assert message == (
            "the CPU is busy (1-minute load average 3.5 on 2 cores) and torch runs 2 threads: "
            "small CPU steps can run many times slower; set OMP_NUM_THREADS=1."
        )
    else:
        assert message is None
