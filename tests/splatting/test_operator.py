"""The teacher as a sparse linear operator equals the direct teacher (SplatTeacher.forward)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import snd_hf.splatting.teacher.operator as operator_module
from snd_hf.cameras import Cameras
from snd_hf.splatting import MVSplatLifter
from snd_hf.splatting.lifters import DepthLifter, Lifter
from snd_hf.splatting.teacher import SplatTeacher, TeacherOperator

HEIGHT, WIDTH = 42, 56  # a 3x4 token grid
TOLERANCE = 1e-5


def _masks(batch: int, views: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Blocky instance masks: a few rectangles with ids up to 9 on a background 0. [B, V, H, W]"""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(batch, views, height, width, dtype=torch.long)
    for b in range(batch):
        for v in range(views):
            for label in range(1, 5):
                top, left = torch.randint(0, height - 8, (1,), generator=generator), torch.randint(0, width - 8, (1,), generator=generator)
                masks[b, v, top : top + 12, left : left + 20] = label + 2 * v
    return masks


def _pose(yaw: float, x: float) -> torch.Tensor:
    """Camera-to-world turned by ``yaw`` about y and moved by ``x`` along x."""
    pose = torch.eye(4)
    c, s = torch.cos(torch.tensor(yaw)), torch.sin(torch.tensor(yaw))
    pose[0, 0], pose[0, 2], pose[2, 0], pose[2, 2] = c, s, -s, c
    pose[0, 3] = x
    return pose


def _views(poses: list[torch.Tensor], batch: int, height: int, width: int, seed: int) -> dict[str, torch.Tensor]:
    views = len(poses)
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    depth = (2.5 + 0.02 * columns + 0.01 * rows + 0.3 * ((rows // 9 + columns // 11) % 2)).float()
    return {
        "image": torch.rand(batch, views, 3, height, width, generator=torch.Generator().manual_seed(seed)),
        "extrinsics": torch.stack(poses).expand(batch, views, 4, 4).clone(),
        "intrinsics": torch.tensor([[0.9, 0.0, 0.5], [0.0, 1.2, 0.5], [0.0, 0.0, 1.0]]).expand(batch, views, 3, 3).clone(),
        "near": torch.full((batch, views), 0.5),
        "far": torch.full((batch, views), 20.0),
        "mask": _masks(batch, views, height, width, seed),
        "depth": depth.expand(batch, views, height, width).clone(),
    }


def _depth_batch(batch: int = 2) -> dict:
    """Two context views and one target between them; the target turns, so some tokens are uncovered."""
    context = _views([_pose(0.0, -0.15), _pose(0.1, 0.15)], batch, HEIGHT, WIDTH, seed=1)
    target = _views([_pose(0.25, 0.0)], batch, HEIGHT, WIDTH, seed=2)
    return {"context": context, "target": target}


def _assert_operator_equals_direct(teacher: SplatTeacher, batch: dict, context_features: torch.Tensor) -> TeacherOperator:
    with torch.no_grad():
        direct = teacher(context_features, batch)
        operator = teacher.operator(batch)
        applied = operator.apply(context_features)
    assert applied.shape == direct.features.shape
    assert torch.equal(operator.coverage, direct.coverage)
    assert (applied - direct.features).abs().max().item() <= TOLERANCE
    return operator


@pytest.mark.parametrize("upsample", ["original", "patch_aligned"])
@pytest.mark.parametrize("blending", [1.0, 0.5])
@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_operator_equals_the_direct_teacher_with_the_depth_lifter(upsample, blending, layout, monkeypatch):
    if layout == "sparse":  # larger maps than this test's are held sparse
        monkeypatch.setattr(operator_module, "DENSE_MAX_ENTRIES", 0)
    batch = _depth_batch()
    context_features = torch.randn(2, 2, 24, HEIGHT // 14, WIDTH // 14)
    teacher = SplatTeacher(DepthLifter(footprint="surface"), blending=blending, upsample=upsample, backend="torch")
    operator = _assert_operator_equals_direct(teacher, batch, context_features)
    coverage = operator.coverage
    assert coverage.any() and not coverage.all()  # the turned target sees past the context views
    # One map per sample, [Vt·h·w, Vc·hc·wc].
    assert [tuple(w.shape) for w in operator.weights] == [(12, 24), (12, 24)]
    assert [w.is_sparse for w in operator.weights] == [layout == "sparse"] * 2
    stored = sum(w._nnz() * (2 * 8 + 4) if w.is_sparse else 12 * 24 * 4 for w in operator.weights)  # int64 pairs + float32
    assert (operator.blend is None) == (blending == 1.0 or layout == "dense")  # a factor of its own beside a sparse map
    if operator.blend is not None:
        stored += sum(m._nnz() * (2 * 8 + 4) for sample in (*operator.blend.means, *operator.blend.spread) for m in sample)
    assert operator.nbytes() == stored + coverage.numel()


@pytest.mark.parametrize("options", [
    {"mask_aware": False, "weighted_blending": False, "resample": "bilinear"},  # the original's choices
    {"blending": 0.0},  # every token its segment's mean
])
def test_operator_follows_every_teacher_option(options):
    batch = _depth_batch(batch=1)
    context_features = torch.randn(1, 2, 16, HEIGHT // 14, WIDTH // 14)
    _assert_operator_equals_direct(SplatTeacher(DepthLifter(), backend="torch", **options), batch, context_features)


class _FixedLifter(Lifter):
    """Returns Gaussians lifted once (MVSplat takes seconds on CPU; the teacher calls its lifter per call)."""

    def __init__(self, gaussians):
        super().__init__()
        self.gaussians = gaussians

    def forward(self, images, cameras, depth=None):
        return self.gaussians


@pytest.fixture(scope="module")
def mvsplat_case(fixtures_dir):
    lifter = MVSplatLifter.from_checkpoint(fixtures_dir / "mvsplat" / "encoder_state_dict.pth")
    reference = load_file(fixtures_dir / "mvsplat" / "cases.safetensors")
    context = {key: reference[f"case0/{name}"] for key, name in (
        ("image", "context_image"), ("extrinsics", "extrinsics"), ("intrinsics", "intrinsics"), ("near", "near"), ("far", "far"),
    )}
    batch, views, _, height, width = context["image"].shape
    context["mask"] = _masks(batch, views, height, width, seed=3)
    # Target: the second context camera (a view rendered from both), with masks of its own.
    target = {key: value[:, 1:] for key, value in context.items()}
    target["mask"] = _masks(batch, 1, height, width, seed=4)
    with torch.no_grad():
        gaussians = lifter(context["image"], Cameras.from_views(context))
    return _FixedLifter(gaussians), {"context": context, "target": target}


@pytest.mark.parametrize("blending", [1.0, 0.5])
def test_operator_equals_the_direct_teacher_with_mvsplat(mvsplat_case, blending):
    lifter, batch = mvsplat_case
    height, width = batch["context"]["image"].shape[-2:]  # 64x96: a 4x6 token grid
    context_features = torch.randn(1, 2, 16, height // 14, width // 14)
    operator = _assert_operator_equals_direct(SplatTeacher(lifter, blending=blending, backend="torch"), batch, context_features)
    assert operator.coverage.shape == (1, 1, 4, 6)


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_views_split_stack_and_samples_cat_round_trip(layout, monkeypatch):
    if layout == "sparse":
        monkeypatch.setattr(operator_module, "DENSE_MAX_ENTRIES", 0)
    batch = _depth_batch()
    batch["target"] = _views([_pose(0.25, 0.0), _pose(-0.2, 0.05)], 2, HEIGHT, WIDTH, seed=5)  # two targets
    context_features = torch.randn(2, 2, 8, HEIGHT // 14, WIDTH // 14)
    teacher = SplatTeacher(DepthLifter(), blending=0.5, backend="torch")
    operator = teacher.operator(batch)
    full = operator.apply(context_features)  # [2, 2, 8, 3, 4]
    samples = [teacher.operator({part: {k: v[b : b + 1] for k, v in batch[part].items()} for part in batch}) for b in range(2)]
    # Samples: built one by one and concatenated (in another order), the batch follows.
    swapped = TeacherOperator.cat([samples[1], samples[0]])
    torch.testing.assert_close(swapped.apply(context_features.flip(0)), full.flip(0), atol=TOLERANCE, rtol=0)
    assert torch.equal(swapped.coverage, operator.coverage.flip(0))
    # Views: each target view's rows alone, and stacked back (in another order).
    views = samples[1].split_views()
    assert len(views) == 2 and all(part.coverage.shape == (1, 1, 3, 4) for part in views)
    assert all(part.weights[0].is_sparse == (layout == "sparse") for part in views)
    for v, part in enumerate(views):
        torch.testing.assert_close(part.apply(context_features[1:]), full[1:, v : v + 1], atol=TOLERANCE, rtol=0)
    restacked = TeacherOperator.stack_views([views[1], views[0]])
    torch.testing.assert_close(restacked.apply(context_features[1:]), full[1:].flip(1), atol=TOLERANCE, rtol=0)
    assert torch.equal(restacked.coverage, operator.coverage[1:].flip(1))
    assert sum(part.nbytes() for part in views) == samples[1].nbytes()
    with pytest.raises(ValueError, match="one sample"):
        operator.split_views()
    with pytest.raises(ValueError, match="one target view each"):  # parts of several views would be misplaced
        TeacherOperator.stack_views([samples[1], views[0]])


def test_operator_rejects_features_of_another_grid():
    operator = SplatTeacher(DepthLifter(), backend="torch").operator(_depth_batch(batch=1))
    with pytest.raises(ValueError, match="context_features"):
        operator.apply(torch.randn(1, 2, 8, 4, 4))
