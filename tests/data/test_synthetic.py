import json
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from snd_hf.cameras import unproject_depth
from snd_hf.cli import main as snd_main
from snd_hf.data.correspondence import correspondences
from snd_hf.data.scannetpp import FolderScenes
from snd_hf.data.synthetic import (
    MARKER_NAME,
    SEMANTIC_CLASSES,
    ensure_synthetic_scenes,
    generate_scenes,
)
from snd_hf.run_folder import MANIFEST_NAME

from .conftest import TINY


def _views(root, positions):
    source = FolderScenes(root)
    scene = source.scenes[0]
    views = [source.load_view(scene, p, None, ("depth", "normals", "semantics")) for p in positions]
    return scene, views


def test_layout_and_file_modes(tiny_scenes):
    scene_dir = tiny_scenes / "scenes" / "synth_0000"
    transforms = json.loads((scene_dir / "transforms_train.json").read_text())
    assert (transforms["w"], transforms["h"]) == (64, 48)
    assert len(transforms["frames"]) == TINY["num_frames"]
    assert Image.open(scene_dir / "images" / "frame_000000.png").mode == "RGB"
    assert Image.open(scene_dir / "instance_segmentation" / "frame_000000.png.png").mode == "I;16"
    assert Image.open(scene_dir / "depth" / "frame_000000.png").mode == "I;16"
    assert Image.open(scene_dir / "semantics" / "frame_000000.png").mode == "L"
    assert json.loads((tiny_scenes / MARKER_NAME).read_text())["num_frames"] == TINY["num_frames"]


def test_reprojection_lands_on_the_same_instance_and_depth(tiny_scenes):
    # Pixel centres of A lifted with A's depth and projected into B: where visible, the pixel of B
    # containing the projection (every point within 0.5 px of its centre) shows the same instance
    # at the same depth, except where a pixel straddles an edge.
    scene, (view_a, view_b) = _views(tiny_scenes, [1, 5])
    frame_a, frame_b = scene.frames[1], scene.frames[5]
    pairs = correspondences(
        view_a["depth"], view_b["depth"], frame_a.extrinsics, frame_b.extrinsics, frame_a.intrinsics, frame_b.intrinsics
    )
    valid = pairs["valid"]
    assert valid.sum() > 500
    rows_a, cols_a = (pairs["xy_a"][valid, 1] - 0.5).long(), (pairs["xy_a"][valid, 0] - 0.5).long()
    rows_b, cols_b = pairs["pixel_b"][valid].unbind(-1)
    same_instance = view_a["mask"][rows_a, cols_a] == view_b["mask"][rows_b, cols_b]
    depth_b = view_b["depth"][rows_b, cols_b]
    same_depth = (depth_b - pairs["depth_b"][valid]).abs() <= 0.05 * depth_b
    good = same_instance & same_depth
    assert good.float().mean() > 0.98
    # Every exception sits on an edge of B: an instance boundary or a depth discontinuity (a box
    # corner seen at a grazing angle), where its 3x3 neighbourhood holds several ids or depths.
    edge = (_neighbourhood(view_b["mask"]) != view_b["mask"]).any(0)
    depths = _neighbourhood(view_b["depth"])
    edge |= (depths.amax(0) - depths.amin(0)) > 0.05 * view_b["depth"]
    assert edge[rows_b[~good], cols_b[~good]].all()


def _neighbourhood(image: torch.Tensor) -> torch.Tensor:
    """The 3x3 neighbours of every pixel (edges replicated). [H, W] -> [9, H, W]"""
    padded = F.pad(image[None, None].double(), (1, 1, 1, 1), mode="replicate")
    return F.unfold(padded, 3)[0].reshape(9, *image.shape).to(image.dtype)


def test_normals_match_finite_differences_of_depth(tiny_scenes):
    scene, (view,) = _views(tiny_scenes, [3])
    frame = scene.frames[3]
    camera = torch.eye(4)  # normals are in the camera frame: unproject in camera coordinates
    points = unproject_depth(view["depth"].double(), camera.double(), frame.intrinsics.double())  # [H, W, 3]
    dx = points[1:-1, 2:] - points[1:-1, :-2]
    dy = points[2:, 1:-1] - points[:-2, 1:-1]
    finite = F.normalize(torch.cross(dx, dy, dim=-1), dim=-1)
    finite = finite * -torch.sign((finite * points[1:-1, 1:-1]).sum(-1, keepdim=True))  # face the camera
    stored = view["normals"].permute(1, 2, 0)[1:-1, 1:-1].double()
    # Only pixels whose 3x3 neighbourhood is one instance (finite differences cross no edge).
    interior = (_neighbourhood(view["mask"]) == view["mask"]).all(0)[1:-1, 1:-1]
    cosine = (finite * stored).sum(-1)[interior]
    assert interior.sum() > 1000
    assert cosine.median() > 0.995
    assert (cosine > 0.95).float().mean() > 0.97


def test_semantics_classes_and_instances_are_consistent(tiny_scenes):
    _, (view,) = _views(tiny_scenes, [0])
    assert set(view["semantics"].unique().tolist()) <= set(range(1, len(SEMANTIC_CLASSES)))
    # Every instance carries exactly one semantic class.
    for instance in view["mask"].unique():
        assert view["semantics"][view["mask"] == instance].unique().numel() == 1
    assert (view["depth"] > 0).all()
    torch.testing.assert_close(view["normals"].norm(dim=0), torch.ones(48, 64), atol=1e-5, rtol=0)


def test_deterministic_by_seed(tmp_path):
    small = {"num_scenes": 1, "num_frames": 3, "height": 16, "width": 24}
    first = generate_scenes(tmp_path / "a", seed=7, progress=False, **small)
    second = generate_scenes(tmp_path / "b", seed=7, progress=False, **small)
    other = generate_scenes(tmp_path / "c", seed=8, progress=False, **small)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
    image = "scenes/synth_0000/images/frame_000000.png"
    assert (first / image).read_bytes() != (other / image).read_bytes()


def test_ensure_reuses_a_complete_set_and_regenerates_otherwise(tmp_path):
    small = {"num_scenes": 1, "num_frames": 2, "height": 16, "width": 24, "progress": False}
    root = ensure_synthetic_scenes(tmp_path / "set", **small)
    marker_time = (root / MARKER_NAME).stat().st_mtime_ns
    assert ensure_synthetic_scenes(tmp_path / "set", **small) == root
    assert (root / MARKER_NAME).stat().st_mtime_ns == marker_time
    (root / "scenes" / "synth_0000" / "images" / "frame_000001.png").unlink()  # incomplete
    ensure_synthetic_scenes(tmp_path / "set", **small)
    assert (root / "scenes" / "synth_0000" / "images" / "frame_000001.png").is_file()
    ensure_synthetic_scenes(tmp_path / "set", **{**small, "num_frames": 3})  # other parameters
    assert len(list((root / "scenes" / "synth_0000" / "images").iterdir())) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no staging folder left behind


def test_generator_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_frames"):
        generate_scenes(tmp_path / "x", num_frames=0)
    with pytest.raises(ValueError, match="image_format"):
        generate_scenes(tmp_path / "x", image_format="bmp")


def test_snd_synth_command(tmp_path, capsys):
    assert snd_main(["synth", "--scenes", "1", "--frames", "2", "--size", "16x24", "--format", "jpg", "--out", str(tmp_path / "cli")]) == 0
    images = sorted((tmp_path / "cli" / "scenes" / "synth_0000" / "images").iterdir())
    assert [p.name for p in images] == ["frame_000000.jpg", "frame_000001.jpg"]
    assert np.asarray(Image.open(images[0])).shape == (16, 24, 3)
    assert "wrote 1 scenes" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Folder rules (issue #11 item 1): never delete or replace a folder the generator did not write.
# ---------------------------------------------------------------------------------------------

SMALL = {"num_scenes": 1, "num_frames": 2, "height": 16, "width": 24, "progress": False}


def _snapshot(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_user_files_survive_snd_synth(tmp_path, capsys):
    mydata = tmp_path / "mydata"
    mydata.mkdir()
    (mydata / "keep.txt").write_bytes(b"precious\n")
    argv = ["synth", "--scenes", "1", "--frames", "2", "--size", "16x24", "--out", str(mydata)]
    try:
        code = snd_main(argv)
    except FileExistsError as error:
        message = str(error)
    else:
        assert code != 0
        message = capsys.readouterr().err
    assert f"{mydata} holds files no snd run wrote there (keep.txt)" in message and "--overwrite" in message
    assert _snapshot(mydata) == {"keep.txt": b"precious\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata"]  # no staging folder left behind
    with pytest.raises(FileExistsError, match="keep.txt"):
        generate_scenes(mydata, **SMALL)
    assert snd_main([*argv, "--overwrite"]) == 0  # the explicit flag replaces it
    assert not (mydata / "keep.txt").exists() and (mydata / MARKER_NAME).is_file()


@pytest.mark.parametrize(
    "plant, named",
    [
        (lambda root: (root / "notes.md").write_text("mine"), "notes.md"),
        (lambda root: (root / "scenes" / "synth_0000" / "images" / "extra.png").write_bytes(b"x"), "scenes/synth_0000/images/extra.png"),
        (lambda root: (root / "scenes" / "mine").mkdir() or (root / "scenes" / "mine" / "a.txt").write_text("a"), "scenes/mine/a.txt"),
        (lambda root: (root / "link").symlink_to(root.parent), "link"),
    ],
)
def test_a_generated_folder_with_foreign_content_is_not_replaced(tmp_path, plant, named):
    root = generate_scenes(tmp_path / "set", **SMALL)
    plant(root)
    before = _snapshot(root)
    with pytest.raises(FileExistsError, match=re.escape(named)):
        generate_scenes(root, seed=1, **SMALL)
    # ensure_synthetic_scenes must regenerate (other parameters) and refuses in the same way.
    with pytest.raises(FileExistsError, match=f"^{re.escape(str(root))} holds files .*{re.escape(named)}.*overwrite=True"):
        ensure_synthetic_scenes(root, **{**SMALL, "num_frames": 3})
    assert _snapshot(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    ensure_synthetic_scenes(root, overwrite=True, **{**SMALL, "num_frames": 3})
    assert len(list((root / "scenes" / "synth_0000" / "images").iterdir())) == 3
    assert sorted(_snapshot(root)) == sorted([MANIFEST_NAME, *json.loads((root / MANIFEST_NAME).read_text())["outputs"]])


def test_synth_writes_through_the_run_folder(tmp_path):
    """`snd synth` lists its files in the run folder's manifest like every command; a hand-edited
    manifest is one line naming it and the key, and nothing is replaced."""
    root = generate_scenes(tmp_path / "set", **SMALL)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["command"] == "snd synth" and manifest["identity"] == json.loads((root / MARKER_NAME).read_text())
    assert manifest["outputs"] == sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file() and path.name != MANIFEST_NAME)
    assert len(manifest["outputs"]) == 1 + 2 * 5 + 1  # the marker, 2 frames x (image, depth, normals, semantics, instances), transforms
    before = _snapshot(root)
    (root / MANIFEST_NAME).write_text(json.dumps({**manifest, "outputs": ["../elsewhere"]}))
    with pytest.raises(ValueError, match=f"^{re.escape(str(root / MANIFEST_NAME))}: outputs\\[0\\] must be a path inside the folder"):
        generate_scenes(root, seed=1, **SMALL)
    assert {name: data for name, data in _snapshot(root).items() if name != MANIFEST_NAME} == {name: data for name, data in before.items() if name != MANIFEST_NAME}


def test_ensure_refuses_a_real_dataset_and_keeps_it_intact(tiny_scenes, tmp_path):
    # The trainer's `dataset: synthetic` pointed at real data: no marker, so nothing is replaced.
    real = tmp_path / "scannetpp"
    shutil.copytree(tiny_scenes / "scenes", real / "scenes")
    before = _snapshot(real)
    with pytest.raises(FileExistsError, match=f"{re.escape(str(real))} holds files no snd run wrote there \\(scenes/synth_0000/"):
        ensure_synthetic_scenes(real, **SMALL)
    assert _snapshot(real) == before


def test_empty_folders_files_and_links_as_out(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate_scenes(empty, **SMALL) == empty and (empty / MARKER_NAME).is_file()
    regenerated = generate_scenes(empty, seed=5, **SMALL)  # a set it wrote itself is replaced
    assert json.loads((regenerated / MARKER_NAME).read_text())["seed"] == 5
    a_file = tmp_path / "a_file"
    a_file.write_text("data")
    with pytest.raises(FileExistsError, match="a_file exists and is not a folder"):
        generate_scenes(a_file, **SMALL)
    link = tmp_path / "link"
    link.symlink_to(empty)
    with pytest.raises(FileExistsError, match="link exists and is not a folder"):
        generate_scenes(link, **SMALL)
    assert a_file.read_text() == "data" and link.is_symlink()
