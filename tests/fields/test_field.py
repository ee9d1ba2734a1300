"""The field itself: parametrisation, one-pass rendering, saving and loading."""

from __future__ import annotations

import copy
import json
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from snd_hf.fields.field import CONFIG_NAME, WEIGHTS_NAME, FeatureField
from snd_hf.files import TEMPORARY_TAG, old_copy
from snd_hf.run_folder import MANIFEST_NAME
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
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME, MANIFEST_NAME]


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
    with pytest.raises(FileExistsError, match=r"photos holds files no snd run wrote there \(keep.jpg\)"):
        instance_field.save(folder)
    assert (folder / "keep.jpg").read_bytes() == b"user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no staging folder left behind


def test_save_never_deletes_a_users_files_beside_a_field(instance_field, tmp_path):
    # A saved field the user added notes to (or a folder that merely holds a file named field.json):
    # saving over it used to replace the whole folder, deleting the notes.
    path = instance_field.save(tmp_path / "room.field")
    (path / "notes.txt").write_text("my notes")
    (path / "mydata").mkdir()
    (path / "mydata" / "a.csv").write_text("1,2")
    before = {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    for folder in (path, tmp_path / "fake"):
        if folder.name == "fake":
            folder.mkdir()
            (folder / CONFIG_NAME).write_text("{}")
            (folder / "keep.txt").write_text("mine")
        with pytest.raises(FileExistsError, match="holds files no snd run wrote there"):
            instance_field.save(folder)
    assert {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
    assert (tmp_path / "fake" / "keep.txt").read_text() == "mine"
    FeatureField.load(path)  # still the good field
    (path / "notes.txt").unlink()
    shutil.rmtree(path / "mydata")
    instance_field.save(path)  # its own earlier save is replaced whole
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME, MANIFEST_NAME]


def test_a_non_finite_field_is_never_saved_over_a_good_one(instance_field, tmp_path):
    path = instance_field.save(tmp_path / "room.field")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    broken = copy.deepcopy(instance_field)
    with torch.no_grad():
        broken.roughness[0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite values in \['roughness'\]; nothing was written"):
        broken.save(path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["room.field"]


def test_a_save_killed_between_its_renames_is_restored_on_load_and_its_leftovers_cleaned(instance_field, glossy_scene, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".m.field{TEMPORARY_TAG}{socket.gethostname()}~{dead.stdout.strip()}~k9"
    leftover.mkdir()  # a kill during a save leaves a temporary of the package's naming
    (leftover / WEIGHTS_NAME).write_bytes(b"half")
    path = instance_field.save(tmp_path / "m.field")  # the next write into the folder removes it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.field"]
    expected = FeatureField.load(path).render(glossy_scene.cameras[HELD_OUT]).diffuse
    path.rename(old_copy(path))  # what a kill between replace_path's two renames leaves
    restored = FeatureField.load(path)
    assert torch.equal(restored.render(glossy_scene.cameras[HELD_OUT]).diffuse, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.field"]
