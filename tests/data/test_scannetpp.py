import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from snd_hf.cameras import normalize_intrinsics
from snd_hf.data.frames import FrameReadError
from snd_hf.data.scannetpp import (
    NON_PINHOLE_MODELS,
    CameraModelError,
    FolderScenes,
    camera_problem,
    frame_number,
)
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


# ---------------------------------------------------------------------------------------------
# Camera models (issue #10 item 2): only undistorted pinholes are read; per-frame values apply.
# ---------------------------------------------------------------------------------------------


def _fisheye(data):
    # ScanNet++'s raw DSLR transforms.json: an OpenCV fisheye with four coefficients.
    data.update(camera_model="OPENCV_FISHEYE", k1=-0.0304, k2=-0.0047, k3=0.0012, k4=-0.0003)


@pytest.mark.parametrize(
    "edit, described",
    [
        (_fisheye, "camera_model 'OPENCV_FISHEYE', not a pinhole projection"),
        *[
            (lambda data, model=model: data.update(camera_model=model), f"camera_model '{model}', not a pinhole")
            for model in NON_PINHOLE_MODELS
        ],
        (lambda data: data.update(camera_model="OPENCV", k1=0.1, k2=0.0, p1=0.0, p2=0.0), "'OPENCV' with lens distortion \\(k1=0.1\\)"),
        (lambda data: data.update(camera_model="FULL_OPENCV", k6=1e-5), "'FULL_OPENCV' with lens distortion \\(k6=1e-05\\)"),
        (lambda data: data.update(camera_model="PINHOLE", p2=0.002), "'PINHOLE' with lens distortion \\(p2=0.002\\)"),
        (lambda data: data.pop("camera_model") and data.update(k1="abc"), "a camera with lens distortion \\(k1=abc\\)"),
        (lambda data: data.update(camera_model="KANNALA"), "unknown camera_model 'KANNALA'"),
        (lambda data: data["frames"][5].update(k3=0.01), "\\(frame frame_000005.png\\): camera_model 'PINHOLE' with lens distortion \\(k3=0.01\\)"),
        (lambda data: data["frames"][2].update(camera_model="OPENCV_FISHEYE"), "\\(frame frame_000002.png\\): camera_model 'OPENCV_FISHEYE'"),
    ],
)
def test_distorted_and_non_pinhole_cameras_are_refused_whatever_on_error(scenes_copy, edit, described):
    _edit_transforms(scenes_copy, edit)
    path = _scene_dir(scenes_copy) / "transforms_train.json"
    for on_error in ("skip", "raise"):
        with pytest.raises(CameraModelError) as error:
            FolderScenes(scenes_copy, on_error=on_error)
        message = str(error.value)
        assert message.startswith(str(path))
        assert re.search(described, message), message
        assert "dslr/nerfstudio/transforms_undistorted.json" in message and "\n" not in message
    with pytest.raises(CameraModelError):
        SceneDataset(scenes_copy)


@pytest.mark.parametrize(
    "edit",
    [
        lambda data: data.pop("camera_model"),
        lambda data: data.update(camera_model="SIMPLE_PINHOLE"),
        lambda data: data.update(camera_model="OPENCV", k1=0.0, k2=0, p1=0.0, p2=-0.0),
        lambda data: data.update(camera_model="FULL_OPENCV", **{f"k{i}": 0.0 for i in range(1, 7)}),
        lambda data: data.update(camera_model="SIMPLE_RADIAL", k1=0.0),
    ],
)
def test_perspective_models_without_distortion_read_as_the_pinhole(tiny_scenes, scenes_copy, edit):
    _edit_transforms(scenes_copy, edit)
    expected = FolderScenes(tiny_scenes).scenes[0].frames
    frames = FolderScenes(scenes_copy, on_error="raise").scenes[0].frames
    assert [frame.name for frame in frames] == [frame.name for frame in expected]
    assert all(torch.equal(a.intrinsics, b.intrinsics) and torch.equal(a.extrinsics, b.extrinsics) for a, b in zip(frames, expected))


def test_per_frame_intrinsics_and_image_sizes_are_honoured(scenes_copy):
    # nerfstudio allows every camera key per frame; frame i gets its own camera here, and the
    # normalised intrinsics must be those of its own values (hand-normalised: fx/w, cx/w; fy/h, cy/h).
    cameras = [(40.0 + i, 41.0 + 2 * i, 30.0 + i / 4, 20.0 - i / 8, 64 if i % 2 else 128, 48 if i % 2 else 96) for i in range(12)]

    def edit(data):
        for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
            del data[key]
        for frame, (fx, fy, cx, cy, w, h) in zip(data["frames"], cameras):
            frame.update(fl_x=fx, fl_y=fy, cx=cx, cy=cy, w=w, h=h)

    _edit_transforms(scenes_copy, edit)
    scene = FolderScenes(scenes_copy, on_error="raise").scenes[0]
    for frame, (fx, fy, cx, cy, w, h) in zip(scene.frames, cameras, strict=True):
        expected = torch.tensor([[fx / w, 0.0, cx / w], [0.0, fy / h, cy / h], [0.0, 0.0, 1.0]])
        torch.testing.assert_close(frame.intrinsics, expected, atol=1e-7, rtol=0)
        assert (frame.height, frame.width) == (h, w)
    with pytest.raises(ValueError, match="has no single image size"):
        scene.height
    # The files are 64x48: the odd frames load, the even ones declare 128x96 and are refused.
    source = FolderScenes(scenes_copy)
    assert source.load_view(source.scenes[0], 1, None, ())["image"].shape == (3, 48, 64)
    with pytest.raises(FrameReadError, match="frame_000002.png: image size differs from the camera's \\(w x h is 128x96 in the transforms, the file is 64x48"):
        source.load_view(source.scenes[0], 2, None, ())

    # A frame's own value beside the document's: used when they agree, refused when they differ.
    def mixed(data):
        data["frames"][3]["fl_x"] = data["fl_x"]
        data["frames"][7]["cx"] = data["cx"] + 1.0

    _edit_transforms(scenes_copy, lambda data: data.update(fl_x=50.0, fl_y=50.0, cx=32.0, cy=24.0, w=64, h=48), index=1)
    _edit_transforms(scenes_copy, mixed, index=1)
    with pytest.warns(UserWarning, match="conflicting camera"):
        source = FolderScenes(scenes_copy)
    assert source.skipped.counts["conflicting camera"] == 1
    assert source.skipped.paths["conflicting camera"] == [str(_scene_dir(scenes_copy, 1) / "images" / "frame_000007.png")]
    assert [frame.name for frame in source.scenes[1].frames] == [f"frame_{i:06d}.png" for i in range(12) if i != 7]
    with pytest.raises(FrameReadError, match="frame_000007.png: conflicting camera \\(cx is 33.0 in the frame, 32.0 in the document\\)"):
        FolderScenes(scenes_copy, on_error="raise")


# ---------------------------------------------------------------------------------------------
# Camera values (issue #11 item 9): a counted skip naming scene and frame, never a silent pose.
# ---------------------------------------------------------------------------------------------


def _set_pose(matrix):
    def edit(data):
        data["frames"][4]["transform_matrix"] = matrix(np.array(data["frames"][4]["transform_matrix"])).tolist()

    return edit


def _nan_translation(pose):
    pose[0, 3] = np.nan
    return pose


def _inf_rotation(pose):
    pose[1, 1] = np.inf
    return pose


def _scaled(pose):
    pose[:3, :3] *= 1.01
    return pose


def _reflected(pose):
    pose[:3, 0] *= -1
    return pose


def _singular(pose):
    pose[:3, :3] = 0.0
    return pose


def _projective(pose):
    pose[3, 0] = 0.5
    return pose


@pytest.mark.parametrize(
    "edit, problem",
    [
        (_set_pose(_nan_translation), "transform_matrix holds NaN or inf"),
        (_set_pose(_inf_rotation), "transform_matrix holds NaN or inf"),
        (_set_pose(_scaled), "transform_matrix's rotation is not a rotation \\(\\|R\\^T R - I\\| = 0.0201, det R = 1.03\\)"),
        (_set_pose(_reflected), "rotation is not a rotation \\(\\|R\\^T R - I\\| = .*, det R = -1\\)"),
        (_set_pose(_singular), "rotation is not a rotation \\(\\|R\\^T R - I\\| = 1, det R = 0\\)"),
        (_set_pose(_projective), "transform_matrix's last row must be \\[0, 0, 0, 1\\], got \\[0.5, 0.0, 0.0, 1.0\\]"),
        (lambda data: data["frames"][4].update(fl_x=0), "focal lengths fl_x, fl_y must be > 0, got 0, 45.7007"),
        (lambda data: data["frames"][4].update(fl_y=-3.0), "focal lengths fl_x, fl_y must be > 0, got 45.7007, -3"),
        (lambda data: data["frames"][4].update(cx=float("nan")), "intrinsics hold NaN or inf"),
        (lambda data: data["frames"][4].update(cy=-1.0), "principal point cx, cy must lie on the 64x48 image, got 32, -1"),
        (lambda data: data["frames"][4].update(w=0), "image size w x h must be positive integers, got 0 x 48"),
        (lambda data: data["frames"][4].update(h=47.5), "image size w x h must be integers, got 64 x 47.5"),
        (lambda data: data["frames"][4].update(fl_x="50"), "fl_x must be a number, got '50'"),
    ],
)
def test_invalid_camera_values_are_counted_skips_naming_scene_and_frame(scenes_copy, edit, problem):
    def remove_conflict(data):  # per-frame values replace the document's for frame 4 only
        for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
            for frame in data["frames"]:
                frame[key] = data[key]
            del data[key]
        edit(data)

    _edit_transforms(scenes_copy, remove_conflict)
    frame_path = str(_scene_dir(scenes_copy) / "images" / "frame_000004.png")
    with pytest.warns(UserWarning, match="frame_000004.png"):
        source = FolderScenes(scenes_copy)
    assert sum(source.skipped.counts.values()) == 1
    (paths,) = source.skipped.paths.values()
    assert paths == [frame_path]
    assert [frame.name for frame in source.scenes[0].frames] == [f"frame_{i:06d}.png" for i in range(12) if i != 4]
    with pytest.raises(FrameReadError, match=f"^{re.escape(frame_path)}: .*{problem}") as error:
        FolderScenes(scenes_copy, on_error="raise")
    assert error.value.path == frame_path
    with pytest.raises(FrameReadError, match=problem):
        SceneDataset(scenes_copy, on_error="raise")


def test_a_zero_focal_length_for_the_whole_scene_skips_every_frame_not_linalg_error(scenes_copy):
    _edit_transforms(scenes_copy, lambda data: data.update(fl_x=0))
    with pytest.warns(UserWarning):
        dataset = SceneDataset(scenes_copy)
    assert dataset.skipped.counts["invalid camera"] == 12
    assert dataset.skipped.counts["too few frames"] == 1
    assert [scene.scene_id for scene in dataset.scenes] == ["synth_0001"]
    assert all(torch.isfinite(frame.intrinsics).all() for scene in dataset.scenes for frame in scene.frames)


def test_camera_problem_accepts_float32_rounded_poses():
    # A rotation stored in float32 (the datasets schema) is still rigid.
    angle = 0.3
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = torch.tensor([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    pose[:3, 3] = torch.tensor([1.0, -2.0, 0.5])
    K = torch.tensor([[50.0, 0.0, 32.0], [0.0, 50.0, 24.0], [0.0, 0.0, 1.0]])
    assert camera_problem(pose.float(), K, 48, 64) is None
    assert camera_problem(pose, K, 48, 64) is None


# ---------------------------------------------------------------------------------------------
# Paths (issue #11 item 8): nothing outside the dataset root is read unless allowed.
# ---------------------------------------------------------------------------------------------


def test_file_paths_are_read_as_written_or_refused(scenes_copy):
    def edit(data):
        data["frames"][1]["file_path"] = "../x/frame_000001.png"
        data["frames"][2]["file_path"] = "images/frame_000002.png"  # nerfstudio's form: the same file
        data["frames"][3]["file_path"] = "/etc/frame_000003.png"
        data["frames"][5]["file_path"] = "other/frame_000005.png"

    _edit_transforms(scenes_copy, edit)
    source_path = str(_scene_dir(scenes_copy) / "transforms_train.json")
    with pytest.warns(UserWarning, match="unsupported file_path"):
        source = FolderScenes(scenes_copy)
    assert source.skipped.counts["unsupported file_path"] == 3
    assert source.skipped.paths["unsupported file_path"] == [f"{source_path} frames[{i}]" for i in (1, 3, 5)]
    assert [frame.name for frame in source.scenes[0].frames] == [f"frame_{i:06d}.png" for i in (0, 2, 4, 6, 7, 8, 9, 10, 11)]
    with pytest.raises(FrameReadError, match="frames\\[1\\]: unsupported file_path \\(file_path '../x/frame_000001.png' must be"):
        FolderScenes(scenes_copy, on_error="raise")


def test_symlinks_leading_outside_the_root_are_refused(scenes_copy, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("not yours")
    scene_dir = _scene_dir(scenes_copy)
    image = scene_dir / "images" / "frame_000003.png"
    image.unlink()
    image.symlink_to(secret)
    mask = scene_dir / "instance_segmentation" / "frame_000006.png.png"
    shutil.copy(mask, outside / "mask.png")
    mask.unlink()
    mask.symlink_to(outside / "mask.png")
    depth = scene_dir / "depth" / "frame_000008.png"
    shutil.copy(depth, outside / "depth.png")
    depth.unlink()
    depth.symlink_to(outside / "depth.png")
    inside = scene_dir / "images" / "frame_000009.png"  # a link within the root is fine
    inside.unlink()
    inside.symlink_to(_scene_dir(scenes_copy, 1) / "images" / "frame_000009.png")
    # A whole scene folder linked from outside.
    shutil.copytree(_scene_dir(scenes_copy, 1), outside / "synth_0002")
    (scenes_copy / "scenes" / "synth_0002").symlink_to(outside / "synth_0002")

    with pytest.warns(UserWarning, match="outside the dataset root"):
        source = FolderScenes(scenes_copy)
    assert source.skipped.counts["outside the dataset root"] == 3
    assert source.skipped.paths["outside the dataset root"] == [str(image), str(mask), str(scenes_copy / "scenes" / "synth_0002")]
    assert [scene.scene_id for scene in source.scenes] == ["synth_0000", "synth_0001"]
    names = [frame.name for frame in source.scenes[0].frames]
    assert names == [f"frame_{i:06d}.png" for i in range(12) if i not in (3, 6)]
    position = names.index("frame_000008.png")
    with pytest.raises(FrameReadError, match=f"{re.escape(str(depth))}: outside the dataset root \\(resolves to {re.escape(str(outside.resolve()))}"):
        source.load_view(source.scenes[0], position, None, ("depth",))
    linked = source.load_view(source.scenes[0], names.index("frame_000009.png"), None, ())
    other = source.load_view(source.scenes[1], 9, None, ())
    assert torch.equal(linked["image"], other["image"])

    allowed = FolderScenes(scenes_copy, allow_outside_root=True)
    assert [scene.scene_id for scene in allowed.scenes] == ["synth_0000", "synth_0001", "synth_0002"]
    assert len(allowed.scenes[0]) == 12
    assert allowed.load_view(allowed.scenes[0], 8, None, ("depth",))["depth"].shape == (48, 64)
    with pytest.raises(FrameReadError, match="unreadable image"):
        allowed.load_view(allowed.scenes[0], 3, None, ())
    with pytest.raises(FrameReadError, match="outside the dataset root"):
        FolderScenes(scenes_copy, on_error="raise")
