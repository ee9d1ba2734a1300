"""The training step's targets (SnD and its two controls), the operator cache and the losses it selects."""

from __future__ import annotations

import pytest
import torch

from snd_hf import SnDConfig, SnDModel
from snd_hf.splatting.lifters import DepthLifter
from snd_hf.splatting.teacher import OperatorCache, SplatTeacher, view_key
from snd_hf.training import DINOHead, TrainingConfig
from snd_hf.training.loss import info_nce_loss
from snd_hf.training.step import nearest_context_tokens, student_loss, teacher_targets
from snd_hf.training.student import BackboneWithHead

HEIGHT, WIDTH = 28, 42  # a 2x3 token grid


def _batch(batch: int = 3, scenes: tuple[str, ...] = ("a", "b", "c"), targets: int = 1) -> dict:
    """Two context views and ``targets`` target views of a fronto-parallel scene, with frame positions."""
    generator = torch.Generator().manual_seed(0)

    def views(count: int, shift: float) -> dict[str, torch.Tensor]:
        poses = torch.eye(4).repeat(batch, count, 1, 1)
        poses[:, :, 0, 3] = shift * torch.arange(count)
        return {
            "image": torch.rand(batch, count, 3, HEIGHT, WIDTH, generator=generator),
            "extrinsics": poses,
            "intrinsics": torch.tensor([[1.0, 0, 0.5], [0, 1.5, 0.5], [0, 0, 1]]).repeat(batch, count, 1, 1),
            "near": torch.full((batch, count), 0.1),
            "far": torch.full((batch, count), 20.0),
            "mask": torch.zeros(batch, count, HEIGHT, WIDTH, dtype=torch.long),
            "depth": torch.full((batch, count, HEIGHT, WIDTH), 3.0),
        }

    return {
        "context": views(2, 0.1),
        "target": views(targets, 0.03),
        "scene": list(scenes[:batch]),
        "index": {
            "context": torch.tensor([[0, 4], [2, 6], [1, 5]])[:batch],
            "target": torch.tensor([[1, 2, 3], [5, 3, 4], [3, 2, 4]])[:batch, :targets],
        },
    }


def _take(batch: dict, samples: list[int], views: list[int] | None = None) -> dict:
    """Some samples (and target views) of a scene batch, as a batch."""
    rows = torch.tensor(samples)
    columns = torch.arange(batch["target"]["image"].shape[1]) if views is None else torch.tensor(views)
    return {
        "context": {name: value[rows] for name, value in batch["context"].items()},
        "target": {name: value[rows][:, columns] for name, value in batch["target"].items()},
        "scene": [batch["scene"][i] for i in samples],
        "index": {"context": batch["index"]["context"][rows], "target": batch["index"]["target"][rows][:, columns]},
    }


@pytest.fixture(scope="module")
def teacher() -> BackboneWithHead:
    torch.manual_seed(0)
    backbone = SnDModel(SnDConfig(hidden_size=24, num_hidden_layers=1, num_attention_heads=2, image_size=56)).eval()
    return BackboneWithHead(backbone, DINOHead(24, hidden_dim=16, bottleneck_dim=8, num_prototypes=32)).eval()


def _config(**values) -> TrainingConfig:
    return TrainingConfig.from_dict({"image_size": [HEIGHT, WIDTH], **values})


def test_cached_operator_targets_equal_the_direct_teacher(teacher):
    splat = SplatTeacher(DepthLifter(), blending=1.0, upsample="patch_aligned", backend="torch")
    batch, config = _batch(targets=2), _config()
    direct = teacher_targets(teacher, splat, batch, config)
    cache = OperatorCache(splat, max_bytes=2**20)
    cached = teacher_targets(teacher, splat, batch, config, cache)
    torch.testing.assert_close(cached.features, direct.features, atol=1e-5, rtol=0)
    assert torch.equal(cached.coverage, direct.coverage)
    assert (cache.hits, cache.misses, len(cache)) == (0, 6, 6)  # one entry per (sample, target view)
    # A reshuffled batch of known samples, their views in another order: nothing is built.
    again = teacher_targets(teacher, splat, _take(batch, [2, 0], [1, 0]), config, cache)
    torch.testing.assert_close(again.features, direct.features[[2, 0]][:, [1, 0]], atol=1e-5, rtol=0)
    assert (cache.hits, cache.misses) == (4, 6)
    # A sample that shares its context pair and one target with a cached one builds only its new view.
    more = _batch(targets=3)
    grown = teacher_targets(teacher, splat, _take(more, [0]), config, cache)
    torch.testing.assert_close(grown.features, teacher_targets(teacher, splat, _take(more, [0]), config).features, atol=1e-5, rtol=0)
    assert (cache.hits, cache.misses, len(cache)) == (6, 7, 7)


def test_operator_cache_is_bounded_and_keys_identify_views(teacher):
    splat = SplatTeacher(DepthLifter(), blending=1.0, backend="torch")
    batch = _batch(targets=2)
    keys = {view_key(batch, b, v) for b in range(3) for v in range(2)}
    assert len(keys) == 6 and view_key(batch, 0, 1) == ("a", (0, 4), 2, (HEIGHT, WIDTH), (HEIGHT, WIDTH))
    one = OperatorCache(splat, max_bytes=2**20)(_take(batch, [0], [0])).nbytes()
    cache = OperatorCache(splat, max_bytes=1.5 * one)
    cache(batch)
    assert len(cache) == 1 and cache.nbytes <= 1.5 * one  # the least recently used were dropped
    with pytest.raises(ValueError, match="frozen lifter"):
        OperatorCache(SplatTeacher(_TrainableLifter()), max_bytes=1)


class _TrainableLifter(DepthLifter):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def requires_grad_(self, requires_grad: bool = True):
        return self  # stays trainable, which the cache must refuse


def test_controls_keep_coverage_and_drop_geometry(teacher):
    splat = SplatTeacher(DepthLifter(), blending=1.0, backend="torch")
    batch = _batch()
    snd = teacher_targets(teacher, splat, batch, _config())
    own = teacher_targets(teacher, splat, batch, _config(targets="self_distillation"))
    copy = teacher_targets(teacher, splat, batch, _config(targets="cross_view_copy"))
    assert torch.equal(own.coverage, snd.coverage) and torch.equal(copy.coverage, snd.coverage)
    torch.testing.assert_close(own.features, teacher.features(batch["target"]["image"]))
    context = teacher.features(batch["context"]["image"])
    # Target 1 is nearer context frame 0 (sample 0); 5 is nearer 6 (sample 1); 3 is as near to 1 as to 5: the first.
    torch.testing.assert_close(copy.features, torch.stack([context[0, 0], context[1, 1], context[2, 0]])[:, None])


def test_nearest_context_tokens_per_target_view():
    context = torch.arange(2 * 3).float().view(1, 3, 1, 1, 2)  # [B, Vc, C, h, w]: view v holds v·2, v·2 + 1
    index = {"context": torch.tensor([[0, 5, 10]]), "target": torch.tensor([[1, 8, 10]])}
    chosen = nearest_context_tokens(context, index)
    assert chosen[0, :, 0, 0, 0].tolist() == [0.0, 4.0, 4.0]


@pytest.mark.parametrize("loss", ["dino_head", "cosine", "mse", "info_nce"])
def test_student_loss_follows_the_configured_objective(teacher, loss):
    splat = SplatTeacher(DepthLifter(), blending=1.0, backend="torch")
    batch = _batch()
    config = _config(loss=loss, center_momentum=0.9 if loss == "dino_head" else None)
    student = BackboneWithHead(teacher.backbone, teacher.head if loss == "dino_head" else None)
    targets = teacher_targets(teacher, splat, batch, config)
    center_before = teacher.head.center.clone()
    outputs = student_loss(student, teacher, batch, targets, config, step=0)
    assert outputs.loss.ndim == 0 and torch.isfinite(outputs.loss)
    # The teacher runs under inference_mode; its targets must still be tensors a loss can save for backward.
    assert not targets.features.is_inference() and not targets.coverage.is_inference()
    outputs.loss.backward()
    assert student.backbone.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    student.zero_grad(set_to_none=True)
    assert outputs.student_features.shape == targets.features.shape
    if loss == "dino_head":
        assert outputs.teacher_probs.shape == (3, 1, 2, 3, 32)
        torch.testing.assert_close(outputs.teacher_probs.sum(-1), torch.ones(3, 1, 2, 3))
        assert not torch.equal(teacher.head.center, center_before)  # DINO centring updated after use
        teacher.head.center.copy_(center_before)
    else:
        assert outputs.teacher_probs is None
        # The student is the teacher here: its own tokens of the target views are the self-distillation targets.
        own = teacher_targets(teacher, splat, batch, _config(targets="self_distillation"))
        zero = student_loss(student, teacher, batch, own, config)
        if loss == "info_nce":  # a token matching its own target still pays for the negatives' softmax mass
            expected = info_nce_loss(own.features, own.features, own.coverage, temperature=config.contrastive_temperature)
            assert zero.loss.item() == pytest.approx(expected.item(), rel=1e-5) and expected.item() > 0
        else:
            assert zero.loss.item() == pytest.approx(0.0, abs=1e-5)


def test_centring_is_rejected_for_losses_without_a_head():
    with pytest.raises(ValueError, match="dino_head"):
        TrainingConfig(loss="cosine", center_momentum=0.9).validate()
