import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from snd_hf.cameras import normalize_intrinsics
from snd_hf.data.frames import FrameReadError
from snd_hf.data.scannetpp import FolderScenes, frame_number
from snd_hf.data.scenes import SceneDataset
from snd_hf.data.synthetic import render_synthetic_scene

from .conftest import TINY


@pytest.fixture
def scenes_copy(tiny_scenes, tmp_path):
    """A writable copy of the tiny generated scenes."""
    return shutil.copytree(tiny_scenes, tmp_path / "copy")


def _scene_dir(root, index=0):
    return root / "scenes" / f"synth_{index:04d}"


def _edit_transforms(root, edit, index=0):
    path = _scene_dir(root, index) / "transforms_train.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_reader_reproduces_the_generated_cameras_exactly(tiny_scenes):
    source = FolderScenes(tiny_scenes)
    assert [scene.scene_id for scene in source.scenes] == ["synth_0000", "synth_0001"]
    for index, scene in enumerate(source.scenes):
        truth = render_synthetic_scene(index, TINY["num_frames"], TINY["height"], TINY["width"], TINY["seed"])
        assert [frame.name for frame in scene.frames] == [f"frame_{i:06d}.png" for i in range(TINY["num_frames"])]
        extrinsics = torch.stack([frame.extrinsics for frame in scene.frames])
        assert torch.equal(extrinsics, torch.tensor(truth["extrinsics"]).float())  # OpenGL file -> OpenCV, exact
        expected_k = normalize_intrinsics(torch.tensor(truth["intrinsics"]), TINY["height"], TINY["width"]).float()
        assert all(torch.equal(frame.intrinsics, expected_k) for frame in scene.frames)
        assert (scene.height, scene.width) == (TINY["height"], TINY["width"])
        assert scene.fields == ("depth", "normals", "semantics")
    # The stored depth is the rendered z-depth to the millimetre.
    view = source.load_view(source.scenes[0], 2, None, ("depth",))
    truth = render_synthetic_scene(0, TINY["num_frames"], TINY["height"], TINY["width"], TINY["seed"])
    assert (view["depth"].double() - torch.tensor(truth["depth"][2])).abs().max() <= 0.0005 + 1e-6
    assert torch.equal(view["mask"], torch.tensor(truth["instance"][2]))


def test_frames_sort_by_number_and_is_bad_is_skipped(scenes_copy):
    def edit(data):
        data["frames"] = data["frames"][::-1]  # file order must not matter
        data["frames"][0]["is_bad"] = True  # frame 11 after reversal

    _edit_transforms(scenes_copy, edit)
    source = FolderScenes(scenes_copy)
    names = [frame.name for frame in source.scenes[0].frames]
    assert names == [f"frame_{i:06d}.png" for i in range(11)]
    assert source.skipped.counts["is_bad frame"] == 1
    assert source.skipped.paths["is_bad frame"][0].endswith("synth_0000/images/frame_000011.png")
    assert len(FolderScenes(scenes_copy, skip_bad=False).scenes[0].frames) == 12
    assert frame_number("DSC01752.JPG") == 1752 and frame_number("x.png") == -1


def test_bad_json_is_reported_with_its_path(scenes_copy):
    path = _scene_dir(scenes_copy) / "transforms_train.json"
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="invalid JSON"):
        source = FolderScenes(scenes_copy)
    assert [scene.scene_id for scene in source.scenes] == ["synth_0001"]
    assert source.skipped.paths["invalid JSON"] == [str(path)]
    with pytest.raises(FrameReadError, match="transforms_train.json: invalid JSON"):
        FolderScenes(scenes_copy, on_error="raise")


def test_malformed_transforms_name_the_problem(scenes_copy):
    _edit_transforms(scenes_copy, lambda data: data.pop("fl_x"))
    with pytest.raises(FrameReadError, match="malformed transforms.*fl_x"):
        FolderScenes(scenes_copy, on_error="raise")
    _edit_transforms(scenes_copy, lambda data: data.update(fl_x=50.0, frames=[{"file_path": "a.png", "transform_matrix": [[1, 0, 0]]}]))
    with pytest.raises(FrameReadError, match="transform_matrix must be 4x4"):
        FolderScenes(scenes_copy, on_error="raise")


@pytest.mark.parametrize("folder, name", [("images", "frame_000004.png"), ("instance_segmentation", "frame_000004.png.png")])
def test_missing_image_or_mask_drops_the_frame_and_counts_it(scenes_copy, folder, name):
    missing = _scene_dir(scenes_copy) / folder / name
    missing.unlink()
    with pytest.warns(UserWarning, match=f"skipped .*{name} \\(file not found\\)"):
        source = FolderScenes(scenes_copy)
    assert "frame_000004.png" not in [frame.name for frame in source.scenes[0].frames]
    assert len(source.scenes[0].frames) == 11
    assert source.skipped.paths["file not found"] == [str(missing)]
    with pytest.raises(FrameReadError, match=name):
        FolderScenes(scenes_copy, on_error="raise")


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("grey image", "image mode must be one of \\['RGB'\\], got 'L'"),
        ("rgb mask", "image mode must be one of .*got 'RGB'"),
        ("small mask", "size must be 48x64 .*got 24x32"),
        ("corrupt image", "unreadable image"),
    ],
)
def test_unusable_files_raise_or_are_skipped_and_counted(scenes_copy, breakage, message):
    scene_dir = _scene_dir(scenes_copy)
    image_path = scene_dir / "images" / "frame_000003.png"
    mask_path = scene_dir / "instance_segmentation" / "frame_000003.png.png"
    if breakage == "grey image":
        Image.open(image_path).convert("L").save(image_path)
    elif breakage == "rgb mask":
        Image.open(image_path).save(mask_path, format="PNG")
    elif breakage == "small mask":
        Image.fromarray(np.zeros((24, 32), dtype=np.uint16)).save(mask_path)
    else:
        image_path.write_bytes(b"not a png at all")
    broken = str(image_path if "image" in breakage else mask_path)

    source = FolderScenes(scenes_copy)
    with pytest.raises(FrameReadError, match=message) as error:
        source.load_view(source.scenes[0], 3, None, ())
    assert error.value.path == broken

    # Every draw of scene 0 uses all its 12 frames, so each of its items is skipped and replaced
    # by a draw of the other scene, with one warning and a count per skip.
    dataset = SceneDataset(scenes_copy, context_gap=11, num_targets=12, samples_per_scene=2)
    with pytest.warns(UserWarning, match="further skips are counted"):
        samples = [dataset[i] for i in range(len(dataset))]
    assert [sample["scene"] for sample in samples] == ["synth_0001"] * 4
    assert sum(dataset.skipped.counts.values()) == 2
    assert sum(dataset.skipped.paths.values(), []) == [broken, broken]
    strict = SceneDataset(scenes_copy, on_error="raise", context_gap=11, num_targets=12)
    with pytest.raises(FrameReadError, match=message):
        strict[0]


def test_scene_with_too_few_frames_is_skipped_or_rejected(scenes_copy):
    _edit_transforms(scenes_copy, lambda data: data.update(frames=data["frames"][:5]))
    with pytest.warns(UserWarning, match="too few frames"):
        dataset = SceneDataset(scenes_copy)
    assert [scene.scene_id for scene in dataset.scenes] == ["synth_0001"]
    assert dataset.skipped.counts["too few frames"] == 1
    with pytest.raises(ValueError, match="5 usable frames, the sampler needs 9"):
        SceneDataset(scenes_copy, on_error="raise")
    _edit_transforms(scenes_copy, lambda data: data.update(frames=data["frames"][:5]), index=1)
    with pytest.raises(ValueError, match="no usable scene"), pytest.warns(UserWarning):
        SceneDataset(scenes_copy)


def test_scene_full_of_gaps_samples_without_looping(scenes_copy):
    # Frame numbers 0, 7, 14, ...: the original retried forever on such gaps; we index positions.
    scene_dir = _scene_dir(scenes_copy)

    def renumber(data):
        for index, frame in enumerate(data["frames"]):
            new_name = f"frame_{7 * index:06d}.png"
            (scene_dir / "images" / frame["file_path"]).rename(scene_dir / "images" / f"tmp_{new_name}")
            (scene_dir / "instance_segmentation" / f"{frame['file_path']}.png").rename(
                scene_dir / "instance_segmentation" / f"tmp_{new_name}.png"
            )
            frame["file_path"] = new_name
        data["frames"][5]["is_bad"] = True

    _edit_transforms(scenes_copy, renumber)
    for folder in ("images", "instance_segmentation"):
        for path in (scene_dir / folder).glob("tmp_*"):
            path.rename(path.with_name(path.name[4:]))
    shutil.rmtree(scene_dir / "depth"), shutil.rmtree(scene_dir / "normals"), shutil.rmtree(scene_dir / "semantics")
    dataset = SceneDataset(scenes_copy, samples_per_scene=20, fields=())
    scene = dataset.scenes[0]
    assert len(scene) == 11 and scene.frames[5].name == "frame_000042.png"
    for index in range(20):
        sample = dataset[index]
        assert sample["index"]["context"][1] - sample["index"]["context"][0] == 8
        assert set(sample["context"]) == {"image", "mask", "extrinsics", "intrinsics", "near", "far"}
