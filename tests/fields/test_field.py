"""The field itself: parametrisation, one-pass rendering, saving and loading."""

from __future__ import annotations

import json

import pytest
import torch

from snd_hf.fields.field import CONFIG_NAME, WEIGHTS_NAME, FeatureField
from snd_hf.splatting.gaussians import Gaussians

from .conftest import HELD_OUT


def test_from_gaussians_keeps_every_covariance(glossy_scene):
    # Random covariances, some of whose eigenvector matrices are reflections (det -1).
    generator = torch.Generator().manual_seed(0)
    factors = torch.randn(50, 3, 3, generator=generator, dtype=torch.float64)
    covariances = factors @ factors.transpose(-1, -2) + 1e-3 * torch.eye(3, dtype=torch.float64)
    gaussians = Gaussians(torch.randn(1, 50, 3, dtype=torch.float64), covariances[None], torch.full((1, 50), 0.7, dtype=torch.float64))
    field = FeatureField.from_gaussians(gaussians, torch.rand(50, 3, dtype=torch.float64), sh_degree=2)
    torch.testing.assert_close(field.covariances(), covariances, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(field.opacities, torch.full((50,), 0.7, dtype=torch.float64))
    # The normal is the axis of least variance.
    eigenvalues, eigenvectors = torch.linalg.eigh(covariances)
    cosine = (field.normals() * eigenvectors[..., 0]).sum(-1).abs()
    torch.testing.assert_close(cosine, torch.ones(50, dtype=torch.float64), atol=1e-6, rtol=0)


def test_full_is_the_sum_of_its_parts(instance_field, glossy_scene):
    with torch.no_grad():
        out = instance_field.render(glossy_scene.cameras[HELD_OUT])
    torch.testing.assert_close(out.color("full"), out.color("ind") + out.color("dep"))
    torch.testing.assert_close(out.features("full"), out.features("ind") + out.features("dep"))
    assert out.features("ind").shape == (3, 8, 32, 48) and out.alpha.shape == (3, 1, 32, 48)
    # One pass renders the same channels as separate passes (the compositing is linear).
    with torch.no_grad():
        colour_only = instance_field.render(glossy_scene.cameras[HELD_OUT], features=False)
    torch.testing.assert_close(colour_only.color("full"), out.color("full"), atol=1e-5, rtol=1e-5)


def test_save_load_render_identical(instance_field, glossy_scene, tmp_path):
    path = instance_field.save(tmp_path / "field")
    loaded = FeatureField.load(path)
    cameras = glossy_scene.cameras[HELD_OUT]
    with torch.no_grad():
        before, after = instance_field.render(cameras), loaded.render(cameras)
    for name in ("diffuse", "specular", "features_ind", "features_dep", "alpha", "depth"):
        assert torch.equal(getattr(before, name), getattr(after, name)), name
    assert loaded.feature_space.source_id == instance_field.feature_space.source_id
    assert loaded.view_names == instance_field.view_names and loaded.info == json.loads(json.dumps(instance_field.info))
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_truncated_or_damaged_files_are_one_line_errors(instance_field, tmp_path):
    path = instance_field.save(tmp_path / "field")
    weights = path / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or modified") as error:
        FeatureField.load(path)
    assert "\n" not in str(error.value) and str(weights) in str(error.value)

    weights.write_bytes(data)
    (path / CONFIG_NAME).write_text((path / CONFIG_NAME).read_text()[:40])
    with pytest.raises(ValueError, match="not valid JSON"):
        FeatureField.load(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        FeatureField.load(tmp_path / "missing")


def test_save_never_replaces_a_foreign_folder(instance_field, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "keep.jpg").write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="not a feature field"):
        instance_field.save(folder)
    assert (folder / "keep.jpg").read_bytes() == b"user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no staging folder left behind


def test_rejects_misshaped_parameters():
    count = 4
    with pytest.raises(ValueError, match=r"FeatureField.specular must have shape \[4, 9, 3\]"):
        FeatureField(
            torch.zeros(count, 3), torch.zeros(count, 3), torch.tensor([[0.0, 0.0, 0.0, 1.0]] * count), torch.zeros(count),
            torch.zeros(count, 3), torch.zeros(count, 16, 3), torch.zeros(count, 0), torch.zeros(count, 9, 0),
            torch.zeros(count), sh_degree=2,
        )  # fmt: skip
