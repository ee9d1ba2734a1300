"""Dataset readers on tiny files written in each dataset's layout."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from snd_hf.eval.datasets import (
    NYUv2Probe3D,
    PascalVOC,
    ScanNetPairs,
    ade20k,
    kitti_eigen,
    scannetpp_depth,
)


def _write_rgb(path, height=6, width=8, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((height, width, 3), value, dtype=np.uint8)
    array[0, 0] = (255, 0, 10)
    Image.fromarray(array).save(path)


def _write_depth(path, millimetres):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(millimetres, dtype=np.uint16)).save(path)


def test_nyuv2_probe3d_test_pickle_and_geonet(tmp_path):
    from scipy.io import savemat

    images = np.zeros((3, 3, 4, 5), dtype=np.uint8)
    images[1, 0] = 255
    depths = np.full((3, 4, 5), 2.0, dtype=np.float32)
    depths[1, 0, 0] = 12.0
    snorms = np.zeros((3, 3, 4, 5), dtype=np.float32)
    snorms[:, 2] = 1.0
    with open(tmp_path / "nyuv2_test.pkl", "wb") as handle:
        pickle.dump({"images": images, "depths": depths, "snorms": snorms, "test_indices": np.array([[1], [2]])}, handle)
    test = NYUv2Probe3D(tmp_path, "test")
    assert len(test) == 2
    sample = test[0]
    assert sample.image.shape == (3, 4, 5) and float(sample.image[0].max()) == 1.0
    assert float(sample.depth[0, 0]) == 0.0 and float(sample.depth[1, 1]) == 2.0  # beyond 10 m → missing
    assert torch.equal(sample.normals[2], torch.ones(4, 5))

    (tmp_path / "nyuv2_geonet").mkdir()
    for i in range(21):
        img = np.zeros((480, 640, 3), dtype=np.float32) - 2 * np.array([122.175, 116.169, 103.508], dtype=np.float32) + i
        savemat(tmp_path / "nyuv2_geonet" / f"room_{i:03d}.mat", {"img": img, "depth": np.full((480, 640), 3.0), "norm": np.ones((480, 640, 3))})
    train, valid = NYUv2Probe3D(tmp_path, "train"), NYUv2Probe3D(tmp_path, "valid")
    assert (len(train), len(valid)) == (19, 2)
    assert float(train[0].image.max()) == pytest.approx(1 / 255, abs=1e-6)  # file 1 after the held-out file 0
    assert train[0].depth.shape == (480, 640) and train[0].normals.shape == (3, 480, 640)


def test_scannetpp_and_kitti_split_files(tmp_path):
    _write_rgb(tmp_path / "scene_b" / "rgb" / "0001.jpg")
    _write_rgb(tmp_path / "scene_a" / "rgb" / "0007.jpg")
    _write_depth(tmp_path / "scene_a" / "depth" / "0007.png", np.full((6, 8), 2500))
    _write_depth(tmp_path / "scene_b" / "depth" / "0001.png", np.full((6, 8), 1000))
    (tmp_path / "scannetpp_val.txt").write_text(
        "/scene_b/rgb/0001.jpg /scene_b/depth/0001.png\n/scene_a/rgb/0007.jpg scene_a/depth/0007.png\n/x.jpg None\n"
    )
    dataset = scannetpp_depth(tmp_path, "val")
    assert len(dataset) == 2 and dataset.max_depth == 20.0 and dataset.crop is None
    assert float(dataset[0].depth[0, 0]) == 2.5  # sorted: scene_a first
    assert dataset[0].image.shape == (3, 6, 8)

    (tmp_path / "kitti_eigen_test.txt").write_text("scene_a/rgb/0007.jpg scene_a/depth/0007.png 721.5377\n")
    kitti = kitti_eigen(tmp_path)
    assert kitti.crop == "garg" and kitti.max_depth == 80.0
    assert float(kitti[0].depth[0, 0]) == pytest.approx(2500 / 256)


def test_ade20k_reduces_zero_label(tmp_path):
    _write_rgb(tmp_path / "images" / "validation" / "ADE_val_1.jpg")
    labels = np.array([[0, 1, 150, 255]], dtype=np.uint8)
    (tmp_path / "annotations" / "validation").mkdir(parents=True)
    Image.fromarray(labels).save(tmp_path / "annotations" / "validation" / "ADE_val_1.png")
    dataset = ade20k(tmp_path)
    assert len(dataset) == 1 and dataset.num_classes == 150
    assert dataset[0].labels.tolist() == [[255, 0, 149, 255]]


def test_pascal_voc_palette_labels(tmp_path):
    _write_rgb(tmp_path / "JPEGImages" / "2007_000032.jpg")
    (tmp_path / "SegmentationClass").mkdir()
    label = Image.fromarray(np.array([[0, 15], [255, 20]], dtype=np.uint8), mode="P")
    label.putpalette([value for i in range(256) for value in (i, 255 - i, i // 2)])
    label.save(tmp_path / "SegmentationClass" / "2007_000032.png")
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000032\n")
    dataset = PascalVOC(tmp_path, "val")
    assert dataset.num_classes == 21 and dataset[0].labels.tolist() == [[0, 15], [255, 20]]


def test_scannet_pairs_bundle(tmp_path):
    scene = tmp_path / "scene0707_00"
    for frame in (15, 585):
        _write_rgb(scene / "color" / f"{frame}.jpg", 48, 64)
        _write_depth(scene / "depth" / f"{frame}.png", np.full((12, 16), 1500))
    angle = np.radians(30.0)
    pose = np.eye(4)
    pose[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    pose[:3, 3] = [1.0, 2.0, 3.0]
    (scene / "pose").mkdir()
    np.savetxt(scene / "pose" / "15.txt", np.eye(4))
    np.savetxt(scene / "pose" / "585.txt", pose)
    np.savez(tmp_path / "test.npz", name=np.array([[707, 0, 15, 585]]))
    np.savez(tmp_path / "intrinsics.npz", scene0707_00=np.array([[32.0, 0, 32.0], [0, 24.0, 24.0], [0, 0, 1]]))
    pairs = ScanNetPairs(tmp_path)
    assert len(pairs) == 1
    pair = pairs[0]
    assert pair.images.shape == (2, 3, 48, 64) and pair.depths.shape == (2, 12, 16)
    assert float(pair.depths[1, 0, 0]) == 1.5
    assert pair.rotation_deg == pytest.approx(30.0, abs=1e-4)
    torch.testing.assert_close(pair.intrinsics[0], torch.tensor([[0.5, 0, 0.5], [0, 0.5, 0.5], [0, 0, 1]]))
    torch.testing.assert_close(pair.extrinsics[1, :3, 3], torch.tensor([1.0, 2.0, 3.0]))


class _Payload:
    """Unpickling this creates a file: the dataset reader must refuse it before anything runs."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("planted", ["beside", "inside", "os.system"])
def test_nyuv2_test_pickle_payload_never_runs(tmp_path, planted):
    marker = tmp_path / "pwned"
    packed = {"images": np.zeros((1, 3, 4, 5), np.uint8), "depths": np.zeros((1, 4, 5), np.float32),
              "snorms": np.zeros((1, 3, 4, 5), np.float32), "test_indices": np.array([[0]])}
    if planted == "beside":
        packed["extra"] = _Payload(marker)
    elif planted == "inside":  # an object array whose element is the payload
        packed["images"] = np.array([_Payload(marker)], dtype=object)
    else:
        packed = _System(f"touch {marker}")
    payload = pickle.dumps(packed)
    assert not marker.exists()
    (tmp_path / "nyuv2_test.pkl").write_bytes(payload)
    with pytest.raises(ValueError) as refused:
        NYUv2Probe3D(tmp_path, "test")
    message = str(refused.value)
    assert "\n" not in message and str(tmp_path / "nyuv2_test.pkl") in message and "nothing in the file was executed" in message
    expected = "posix.system" if planted == "os.system" else "pathlib"
    assert expected in message
    assert not marker.exists()


class _System:
    def __init__(self, command) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_nyuv2_test_pickle_of_the_real_structure_loads_identically(tmp_path, protocol):
    rng = np.random.default_rng(3)
    packed = {
        "images": rng.integers(0, 256, (3, 3, 4, 5), dtype=np.uint8),
        "depths": rng.uniform(0.5, 9.0, (3, 4, 5)).astype(np.float32),
        "snorms": rng.normal(size=(3, 3, 4, 5)).astype(np.float32),
        "test_indices": np.array([[2], [0]]),
        "scenes": ["bedroom_0001", "kitchen_0002", "office_0003"],  # extra plain entries are read too
        "scale": np.float64(1.5),
        "ids": (1, 2.5, b"raw", None, True),
    }
    (tmp_path / "nyuv2_test.pkl").write_bytes(pickle.dumps(packed, protocol=protocol))
    dataset = NYUv2Probe3D(tmp_path, "test")
    read = dataset._packed
    assert read.keys() == packed.keys()
    for key in ("images", "depths", "snorms", "test_indices"):
        assert read[key].dtype == packed[key].dtype and np.array_equal(read[key], packed[key])
    assert read["scenes"] == packed["scenes"] and read["ids"] == packed["ids"] and read["scale"] == 1.5
    assert dataset.indices == [2, 0]
    assert torch.equal(dataset[1].image, torch.from_numpy(packed["images"][0].astype(np.float32) / 255.0))


def test_a_truncated_test_pickle_is_one_line_naming_it(tmp_path):
    (tmp_path / "nyuv2_test.pkl").write_bytes(pickle.dumps({"images": np.zeros((2, 3))})[:-20])
    with pytest.raises(ValueError, match=r"nyuv2_test.pkl is not a readable pickle") as refused:
        NYUv2Probe3D(tmp_path, "test")
    assert "\n" not in str(refused.value)
