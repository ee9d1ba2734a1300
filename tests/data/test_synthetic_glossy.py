"""The glossy option of the scene generator: matte output unchanged, Blinn–Phong highlights exact."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from snd_hf.data.synthetic import (
    HIGHLIGHT_THRESHOLD,
    MARKER_NAME,
    generate_scenes,
    render_synthetic_scene,
)
from snd_hf.fields.scene import load_scene

# SHA-256 of the quantised outputs (as written to PNG) of render_synthetic_scene(i, 6, 24, 32, seed=5),
# recorded with the generator before the glossy option existed.
MATTE_DIGESTS = {
    0: "6deeb2c3f47c7be8421ff811b1a351a80c94248dbf39c6a3df9945ed2f080654",
    1: "66c2adb3536bde57316da20e8d65591e680aca8a9334897fa33a02712ea6e0a6",
}


def _digest(rendered: dict) -> str:
    digest = hashlib.sha256()
    digest.update(np.round(rendered["image"] * 255).astype(np.uint8).tobytes())
    digest.update(np.clip(np.round(rendered["depth"] * 1000.0), 0, 65535).astype(np.uint16).tobytes())
    digest.update(rendered["instance"].astype(np.uint16).tobytes())
    digest.update(rendered["semantic"].astype(np.uint8).tobytes())
    digest.update(np.clip(np.round((rendered["normals"] + 1.0) * 127.5), 0, 255).astype(np.uint8).tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("index", sorted(MATTE_DIGESTS))
def test_matte_scenes_are_unchanged(index):
    rendered = render_synthetic_scene(index, 6, 24, 32, seed=5)
    assert _digest(rendered) == MATTE_DIGESTS[index]
    assert "specular" not in rendered and "materials" not in rendered


@pytest.fixture(scope="module")
def pair():
    return render_synthetic_scene(3, 8, 48, 64, seed=1), render_synthetic_scene(3, 8, 48, 64, seed=1, glossy=True)


def test_gloss_only_adds_the_specular_term(pair):
    matte, glossy = pair
    for key in ("depth", "normals", "instance", "semantic", "extrinsics", "intrinsics"):
        assert np.array_equal(matte[key], glossy[key]), key
    assert np.array_equal(glossy["image"], np.clip(matte["image"] + glossy["specular"][..., None], 0.0, 1.0))
    assert np.array_equal(glossy["highlight"], glossy["specular"] > HIGHLIGHT_THRESHOLD)
    shiny = np.isin(glossy["instance"], [material["instance"] for material in glossy["materials"]])
    assert (glossy["specular"][~shiny] == 0).all() and glossy["specular"][shiny].max() > 2 * HIGHLIGHT_THRESHOLD
    assert glossy["highlight"].any()


def test_specular_is_blinn_phong_of_the_lights(pair):
    _, glossy = pair
    intrinsics = glossy["intrinsics"]
    materials = {material["instance"]: material for material in glossy["materials"]}
    frames, rows, columns = np.nonzero(glossy["specular"] > 0.01)
    checked = 0
    for frame, row, column in list(zip(frames, rows, columns))[::7]:
        pose = glossy["extrinsics"][frame]
        ray = np.linalg.inv(intrinsics) @ np.array([column + 0.5, row + 0.5, 1.0])
        point = pose[:3, 3] + glossy["depth"][frame, row, column] * (pose[:3, :3] @ ray)
        normal = pose[:3, :3] @ glossy["normals"][frame, row, column]
        to_eye = pose[:3, 3] - point
        to_eye /= np.linalg.norm(to_eye)
        material = materials[int(glossy["instance"][frame, row, column])]
        expected = 0.0
        for light in glossy["lights"]:
            to_light = (light - point) / np.linalg.norm(light - point)
            half = (to_light + to_eye) / np.linalg.norm(to_light + to_eye)
            if normal @ to_light > 0 and normal @ to_eye > 0:
                expected += max(normal @ half, 0.0) ** material["shininess"]
        np.testing.assert_allclose(glossy["specular"][frame, row, column], material["strength"] * expected, rtol=1e-6, atol=1e-9)
        checked += 1
    assert checked > 10


def test_highlights_move_with_the_camera(pair):
    # The same object's highlight sits on different surface points in different frames.
    _, glossy = pair
    instance = glossy["materials"][0]["instance"]
    centroids = []
    for frame in range(len(glossy["image"])):
        bright = (glossy["specular"][frame] > HIGHLIGHT_THRESHOLD) & (glossy["instance"][frame] == instance)
        if bright.sum() >= 3:
            pose, (rows, columns) = glossy["extrinsics"][frame], np.nonzero(bright)
            rays = np.linalg.inv(glossy["intrinsics"]) @ np.stack([columns + 0.5, rows + 0.5, np.ones(len(rows))])
            points = pose[:3, 3, None] + glossy["depth"][frame][rows, columns] * (pose[:3, :3] @ rays)
            centroids.append(points.mean(axis=1))
    assert len(centroids) >= 2
    assert max(np.linalg.norm(a - b) for a in centroids for b in centroids) > 0.05  # metres


def test_written_glossy_scenes_round_trip(tmp_path):
    root = generate_scenes(tmp_path / "glossy", num_scenes=1, num_frames=4, height=24, width=32, seed=2, progress=False, glossy=True)
    assert json.loads((root / MARKER_NAME).read_text())["glossy"] is True
    scene_dir = root / "scenes" / "synth_0000"
    transforms = json.loads((scene_dir / "transforms_train.json").read_text())
    truth = render_synthetic_scene(0, 4, 24, 32, seed=2, glossy=True)
    assert transforms["materials"] == truth["materials"]
    scene = load_scene(scene_dir)
    torch.testing.assert_close(scene.specular, torch.from_numpy(np.clip(truth["specular"], 0, 1)).float(), atol=1 / 65535, rtol=0)
    assert torch.equal(scene.highlights, torch.from_numpy(truth["highlight"]))
    assert scene.glossy_instances == tuple(material["instance"] for material in truth["materials"])
    matte = generate_scenes(tmp_path / "matte", num_scenes=1, num_frames=4, height=24, width=32, seed=2, progress=False)
    assert "glossy" not in json.loads((matte / MARKER_NAME).read_text())
    assert not (matte / "scenes" / "synth_0000" / "specular").exists()
