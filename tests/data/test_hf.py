import json
import re
import shutil

import datasets
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from snd_hf.data.frames import FrameReadError
from snd_hf.data.hf import (
    HFScenes,
    StreamingSceneDataset,
    load_scene_dataset,
    save_scene_dataset,
    scene_features,
    scenes_to_hf,
)
from snd_hf.data.scannetpp import FolderScenes
from snd_hf.data.scenes import SceneDataset, collate_scenes

from .conftest import TINY


@pytest.fixture(scope="module")
def converted(tiny_scenes, tmp_path_factory):
    return scenes_to_hf(tiny_scenes, progress=False, cache_dir=str(tmp_path_factory.mktemp("hf_cache")))


def _assert_same_samples(expected, actual):
    assert len(expected) == len(actual)
    for left, right in zip(expected, actual, strict=True):
        assert left["scene"] == right["scene"]
        assert torch.equal(left["index"]["target"], right["index"]["target"])
        for part in ("context", "target"):
            assert left[part].keys() == right[part].keys()
            for key in left[part]:
                assert torch.equal(left[part][key], right[part][key]), (part, key)


def test_schema_one_row_per_frame(converted):
    assert converted.features == scene_features()
    assert converted.num_rows == TINY["num_scenes"] * TINY["num_frames"]
    row = converted[0]
    assert (row["scene"], row["file_name"]) == ("synth_0000", "frame_000000.png")
    assert row["image"].mode == "RGB" and row["depth"].mode == "I;16" and row["mask"].size == (64, 48)
    assert len(row["extrinsics"]) == 16 and len(row["intrinsics"]) == 9


@pytest.mark.parametrize("storage", ["save_to_disk", "parquet", "in_memory"])
def test_round_trip_gives_the_folder_tensors(tiny_scenes, converted, tmp_path, storage):
    if storage == "save_to_disk":
        root = save_scene_dataset(converted, tmp_path / "saved")
    elif storage == "parquet":
        converted.to_parquet(str(tmp_path / "pq" / "train.parquet"))
        root = tmp_path / "pq"
    else:
        root = converted
    options = {"num_targets": 2, "image_size": (24, 32), "samples_per_scene": 2}
    folder = SceneDataset(tiny_scenes, **options)
    from_hf = SceneDataset(root, **options)
    assert [scene.scene_id for scene in from_hf.scenes] == [scene.scene_id for scene in folder.scenes]
    _assert_same_samples([folder[i] for i in range(len(folder))], [from_hf[i] for i in range(len(from_hf))])


def test_saving_a_dataset_never_replaces_a_users_folder(converted, tmp_path):
    mydata = tmp_path / "mydata"
    (mydata / "sub").mkdir(parents=True)
    (mydata / "sub" / "a.csv").write_text("1,2")
    with pytest.raises(FileExistsError, match=r"mydata holds files no snd run wrote there \(sub/a.csv\)"):
        save_scene_dataset(converted, mydata)  # datasets' own save_to_disk replaces it without a word
    assert (mydata / "sub" / "a.csv").read_text() == "1,2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata"]  # no staging left
    saved = save_scene_dataset(converted, tmp_path / "saved")
    save_scene_dataset(converted.select(range(2)), saved)  # its own earlier save is replaced whole
    assert load_scene_dataset(saved).num_rows == 2
    save_scene_dataset(converted, mydata, overwrite=True)
    assert load_scene_dataset(mydata).num_rows == converted.num_rows and not (mydata / "sub").exists()


def test_streaming_matches_random_access(tiny_scenes, converted, tmp_path):
    converted.to_parquet(str(tmp_path / "train.parquet"))
    stream = load_scene_dataset(tmp_path, streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    streamed = list(StreamingSceneDataset(stream, samples_per_scene=2, fields=("depth",)))
    folder = SceneDataset(tiny_scenes, samples_per_scene=2, fields=("depth",))
    _assert_same_samples([folder[i] for i in range(len(folder))], streamed)


def test_is_bad_and_schema_checks(converted):
    flagged = converted.map(lambda row, index: {"is_bad": index == 3}, with_indices=True)
    source = HFScenes(flagged)
    assert len(source.scenes[0]) == TINY["num_frames"] - 1
    assert source.skipped.counts["is_bad frame"] == 1
    assert len(HFScenes(flagged, skip_bad=False).scenes[0]) == TINY["num_frames"]
    with pytest.raises(ValueError, match="lacks the columns \\['mask'\\]"):
        HFScenes(converted.remove_columns("mask"))
    with pytest.raises(TypeError, match="StreamingSceneDataset"):
        HFScenes(converted.to_iterable_dataset())


def test_conversion_follows_changes_to_the_folder(tiny_scenes, tmp_path):
    root = tmp_path / "scenes_copy"
    shutil.copytree(tiny_scenes, root)
    cache = str(tmp_path / "cache")
    before = scenes_to_hf(root, progress=False, cache_dir=cache)
    image = root / "scenes" / "synth_0000" / "images" / "frame_000000.png"
    Image.new("RGB", (64, 48), (255, 0, 0)).save(image)
    after = scenes_to_hf(root, progress=False, cache_dir=cache)  # same cache: must not reuse the old rows
    assert before[0]["image"].getpixel((0, 0)) != (255, 0, 0)
    assert after[0]["image"].getpixel((0, 0)) == (255, 0, 0)


def test_load_scene_dataset_rejects_an_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a saved dataset nor parquet"):
        load_scene_dataset(tmp_path)


def test_streaming_with_workers_yields_every_scene_once(converted):
    stream = StreamingSceneDataset(converted, fields=(), samples_per_scene=2)  # map-style: one shard
    loader = DataLoader(stream, batch_size=1, num_workers=2, collate_fn=collate_scenes)
    assert sorted(batch["scene"][0] for batch in loader) == ["synth_0000"] * 2 + ["synth_0001"] * 2


# ---------------------------------------------------------------------------------------------
# Bad frames on the datasets path (issue #11 items 7, 8, 9): validated at conversion, counted
# skips at load, as in the folder reader.
# ---------------------------------------------------------------------------------------------


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_conversion_leaves_out_unreadable_frames_and_reports_them(tiny_scenes, tmp_path):
    root = shutil.copytree(tiny_scenes, tmp_path / "copy")
    broken = root / "scenes" / "synth_0000" / "images" / "frame_000003.png"
    _truncate(broken)
    missing = root / "scenes" / "synth_0001" / "depth" / "frame_000005.png"
    missing.unlink()
    cache = str(tmp_path / "cache")
    for attempt in range(2):  # the second conversion reuses the cached rows and warns again
        with pytest.warns(UserWarning, match="scenes_to_hf left out 2 frames or scenes") as record:
            converted = scenes_to_hf(root, progress=False, cache_dir=cache)
        summary = str(record[-1].message)
        assert f"unreadable image: 1 (first: {broken})" in summary
        assert f"file not found: 1 (first: {missing})" in summary
    assert converted.num_rows == 2 * TINY["num_frames"] - 2
    names = list(zip(converted["scene"], converted["file_name"]))
    assert ("synth_0000", "frame_000003.png") not in names and ("synth_0001", "frame_000005.png") not in names
    with pytest.raises(FrameReadError, match=f"{broken}: unreadable image"):
        scenes_to_hf(root, progress=False, cache_dir=cache, on_error="raise")


def _corrupt_row(converted, row_index, column="image"):
    """The dataset with the embedded bytes of one row's ``column`` cut in half (a truncated PNG)."""
    raw = converted.cast_column(column, datasets.Image(decode=False))

    def cut(value, index):
        if index == row_index:
            value = {"bytes": value["bytes"][: len(value["bytes"]) // 2], "path": value["path"]}
        return {column: value}

    return raw.map(cut, input_columns=column, with_indices=True).cast_column(column, datasets.Image())


def test_unreadable_embedded_frames_are_counted_skips_like_the_folder_reader(converted):
    corrupt = _corrupt_row(converted, 3)  # scene synth_0000, frame 3
    source = f"{HFScenes(corrupt).where}:synth_0000/frame_000003.png[image]"
    # Every draw of scene 0 uses all its frames: each is skipped and replaced by a draw of scene 1,
    # exactly as tests/data/test_scannetpp.py::test_unusable_files_raise_or_are_skipped_and_counted.
    dataset = SceneDataset(corrupt, context_gap=11, num_targets=12, samples_per_scene=2)
    with pytest.warns(UserWarning, match="further skips are counted"):
        samples = [dataset[i] for i in range(len(dataset))]
    assert [sample["scene"] for sample in samples] == ["synth_0001"] * 4
    assert dict(dataset.skipped.counts) == {"unreadable image": 2}
    assert dataset.skipped.paths["unreadable image"] == [source, source]
    with pytest.raises(FrameReadError, match=re.escape(source) + ": unreadable image"):
        SceneDataset(corrupt, context_gap=11, num_targets=12, on_error="raise")[0]

    stream = StreamingSceneDataset(corrupt, context_gap=11, num_targets=12, samples_per_scene=2)
    with pytest.warns(UserWarning, match="unreadable image"):
        streamed = list(stream)
    assert [sample["scene"] for sample in streamed] == ["synth_0001"] * 2  # skipped samples are not replaced
    assert dict(stream.skipped.counts) == {"unreadable image": 2}
    assert stream.skipped.paths["unreadable image"] == ["stream:synth_0000/frame_000003.png[image]"] * 2
    with pytest.raises(FrameReadError, match="unreadable image"):
        list(StreamingSceneDataset(corrupt, context_gap=11, num_targets=12, on_error="raise"))


def test_rows_with_invalid_cameras_are_counted_skips(converted):
    def poison(row, index):
        if index == 4:
            row["extrinsics"] = [float("nan")] + row["extrinsics"][1:]
        if index == 15:
            row["intrinsics"] = [0.0] + row["intrinsics"][1:]
        return row

    rows = converted.map(poison, with_indices=True)
    with pytest.warns(UserWarning, match="invalid camera"):
        source = HFScenes(rows)
    assert source.skipped.counts["invalid camera"] == 2
    assert source.skipped.paths["invalid camera"] == [f"{source.where}:synth_0000/frame_000004.png", f"{source.where}:synth_0001/frame_000003.png"]
    assert [len(scene) for scene in source.scenes] == [TINY["num_frames"] - 1] * 2
    with pytest.raises(FrameReadError, match="synth_0000/frame_000004.png: invalid camera \\(transform_matrix holds NaN or inf\\)"):
        HFScenes(rows, on_error="raise")
    stream = StreamingSceneDataset(rows, fields=(), samples_per_scene=1)
    with pytest.warns(UserWarning, match="invalid camera"):
        assert [sample["scene"] for sample in stream] == ["synth_0000", "synth_0001"]
    assert stream.skipped.counts["invalid camera"] == 2


def test_rows_never_read_files_named_by_their_path(converted, tmp_path):
    # An Image value without bytes would make datasets open its "path" on this machine.
    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 48), (1, 2, 3)).save(secret)
    raw = converted.cast_column("image", datasets.Image(decode=False))
    pointing = raw.map(lambda value, i: {"image": {"bytes": None, "path": str(secret)} if i == 0 else value}, input_columns="image", with_indices=True)
    source = HFScenes(pointing.cast_column("image", datasets.Image()))
    with pytest.raises(FrameReadError, match="synth_0000/frame_000000.png\\[image\\]: unreadable image \\(no embedded bytes"):
        source.load_view(source.scenes[0], 0, None, ())


def test_conversion_never_embeds_files_outside_the_root(tiny_scenes, tmp_path):
    root = shutil.copytree(tiny_scenes, tmp_path / "copy")
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"snd-hf secret 7f3a: must never reach a dataset")
    image = root / "scenes" / "synth_0000" / "images" / "frame_000003.png"
    image.unlink()
    image.symlink_to(secret)
    for allow in (False, True):  # outside the root by default; not an image when allowed
        reason = "unreadable image" if allow else "outside the dataset root"
        with pytest.warns(UserWarning, match=f"left out 1 frames or scenes .*{reason}: 1 \\(first: {re.escape(str(image))}\\)"):
            converted = scenes_to_hf(root, progress=False, cache_dir=str(tmp_path / f"cache_{allow}"), allow_outside_root=allow)
        assert converted.num_rows == 2 * TINY["num_frames"] - 1
        converted.save_to_disk(str(tmp_path / f"saved_{allow}"))
        written = [path for path in tmp_path.rglob("*.arrow") if f"_{allow}" in str(path)]
        assert written and not any(b"snd-hf secret 7f3a" in path.read_bytes() for path in written)
    with pytest.raises(FrameReadError, match="outside the dataset root"):
        scenes_to_hf(root, progress=False, cache_dir=str(tmp_path / "cache_raise"), on_error="raise")


def test_per_frame_cameras_survive_conversion(tiny_scenes, tmp_path):
    root = shutil.copytree(tiny_scenes, tmp_path / "copy")
    path = root / "scenes" / "synth_0000" / "transforms_train.json"
    data = json.loads(path.read_text())
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
        del data[key]
    for index, frame in enumerate(data["frames"]):
        frame.update(fl_x=40.0 + index, fl_y=45.0, cx=32.0, cy=24.0 + index / 2, w=64, h=48 + 16 * (index % 2))
    path.write_text(json.dumps(data))
    folder = FolderScenes(root)
    with pytest.warns(UserWarning, match="image size differs from the camera's"):  # frame sizes differ from the declared ones...
        converted = scenes_to_hf(root, progress=False, cache_dir=str(tmp_path / "cache"))
    # ...for the odd frames (declared 64x64, stored 64x48): left out, the others keep their own camera.
    from_hf = HFScenes(converted)
    assert [frame.name for frame in from_hf.scenes[0].frames] == [f"frame_{i:06d}.png" for i in range(0, 12, 2)]
    expected = {frame.name: frame for frame in folder.scenes[0].frames}
    for frame in from_hf.scenes[0].frames:
        assert torch.equal(frame.intrinsics, expected[frame.name].intrinsics)
        assert (frame.height, frame.width) == (expected[frame.name].height, expected[frame.name].width) == (48, 64)
    assert from_hf.scenes[0].frames[1].intrinsics[0, 0] == torch.tensor(42.0 / 64)  # frame 2's own fl_x
