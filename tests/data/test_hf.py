import shutil

import datasets
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from snd_hf.data.hf import (
    HFScenes,
    StreamingSceneDataset,
    load_scene_dataset,
    scene_features,
    scenes_to_hf,
)
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
        converted.save_to_disk(str(tmp_path / "saved"))
        root = tmp_path / "saved"
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
