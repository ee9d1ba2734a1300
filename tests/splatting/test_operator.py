"""The teacher as a sparse linear operator equals the direct teacher (SplatTeacher.forward)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from snd_hf.splatting import MVSplatLifter
from snd_hf.splatting.lifters import DepthLifter, Lifter
from snd_hf.splatting.operator import TeacherOperator
from snd_hf.splatting.teacher import SplatTeacher

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
def test_operator_equals_the_direct_teacher_with_the_depth_lifter(upsample, blending):
    batch = _depth_batch()
    context_features = torch.randn(2, 2, 24, HEIGHT // 14, WIDTH // 14)
    teacher = SplatTeacher(DepthLifter(footprint="surface"), blending=blending, upsample=upsample, backend="torch")
    operator = _assert_operator_equals_direct(teacher, batch, context_features)
    coverage = operator.coverage
    assert coverage.any() and not coverage.all()  # the turned target sees past the context views
    # One map per sample, [Vt·h·w, Vc·hc·wc].
    assert [tuple(w.shape) for w in operator.weights] == [(12, 24), (12, 24)]


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

    def forward(self, context):
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
        gaussians = lifter(context)
    return _FixedLifter(gaussians), {"context": context, "target": target}


@pytest.mark.parametrize("blending", [1.0, 0.5])
def test_operator_equals_the_direct_teacher_with_mvsplat(mvsplat_case, blending):
    lifter, batch = mvsplat_case
    height, width = batch["context"]["image"].shape[-2:]  # 64x96: a 4x6 token grid
    context_features = torch.randn(1, 2, 16, height // 14, width // 14)
    operator = _assert_operator_equals_direct(SplatTeacher(lifter, blending=blending, backend="torch"), batch, context_features)
    assert operator.coverage.shape == (1, 1, 4, 6)


def test_split_and_cat_round_trip_and_apply_per_sample():
    batch = _depth_batch()
    context_features = torch.randn(2, 2, 8, HEIGHT // 14, WIDTH // 14)
    operator = SplatTeacher(DepthLifter(), blending=0.5, backend="torch").operator(batch)
    parts = operator.split()
    assert len(parts) == 2 and all(len(part) == 1 for part in parts)
    torch.testing.assert_close(parts[1].apply(context_features[1:]), operator.apply(context_features)[1:])
    # Reassembled in another order, the batch follows.
    swapped = TeacherOperator.cat([parts[1], parts[0]])
    torch.testing.assert_close(swapped.apply(context_features.flip(0)), operator.apply(context_features).flip(0))
    assert torch.equal(swapped.coverage, operator.coverage.flip(0))
    assert operator.nbytes() > 0


def test_operator_rejects_features_of_another_grid():
    operator = SplatTeacher(DepthLifter(), backend="torch").operator(_depth_batch(batch=1))
    with pytest.raises(ValueError, match="context_features"):
        operator.apply(torch.randn(1, 2, 8, 4, 4))
