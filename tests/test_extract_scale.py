"""`snd extract` at scale: processes (accelerate), datasets input, Parquet shards, resuming (snd_hf/extract.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from snd_hf.cli import main
from snd_hf.demo import DEFAULT_CHECKPOINT
from snd_hf.feature_shards import INDEX_JSON, load_features, read_rows
from snd_hf.files import TEMPORARY_TAG

REPO = Path(__file__).resolve().parents[1]
LAUNCH = [
    sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
    "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29531",
]  # fmt: skip
SHAPES = [(40, 60), (60, 40), (50, 50)]  # three aspect ratios: batches end where the size changes


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(40):
        pixels = np.random.default_rng(i).integers(0, 256, (*SHAPES[i % 3], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"im{i:02d}.png")
    return sorted(folder.glob("*.png"))


def extract(*arguments):
    return ["extract", *map(str, arguments), "--model", str(DEFAULT_CHECKPOINT), "--shortest-edge", "28", "--batch-size", "4"]


def launch(arguments, script=("-m", "snd_hf.cli"), **env):
    """Run ``snd extract`` (or ``script``) in two CPU processes under accelerate's launcher; (return code, output)."""
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env}
    done = subprocess.run(LAUNCH + [*script, *arguments], cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def per_image(folder):
    """{stem: (feature_map, cls)} of a per-image output folder."""
    result = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(path, "pt") as handle:
            result[path.stem] = (handle.get_tensor("feature_map"), handle.get_tensor("cls"))
    return result


def assert_same_features(expected, rows):
    assert sorted(rows) == sorted(expected)
    for image_id, (feature_map, cls) in expected.items():
        torch.testing.assert_close(rows[image_id]["feature_map"], feature_map, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rows[image_id]["cls"], cls, atol=1e-5, rtol=1e-5)


def no_temporaries(folder):
    return not [path for path in Path(folder).iterdir() if TEMPORARY_TAG in path.name]


def test_shards_hold_the_per_image_features_and_load_with_datasets(images, tmp_path, capsys):
    files, shards = tmp_path / "files", tmp_path / "shards"
    assert main(extract(*images, "--out", files)) == 0
    assert main(extract(*images, "--out", shards, "--format", "shards", "--shard-size", "16")) == 0
    expected = per_image(files)
    assert len(expected) == 40
    rows = read_rows(shards)
    assert_same_features(expected, {k: {"feature_map": v["feature_map"], "cls": v["cls"]} for k, v in rows.items()})
    index = json.loads((shards / INDEX_JSON).read_text())
    assert [entry["file"] for entry in index["shards"]] == [f"shard-0000{k}-of-00003.parquet" for k in range(3)]
    assert [entry["images"] for entry in index["shards"]] == [16, 16, 8] and index["images"] == 40
    assert index["hidden_size"] == 48 and index["weights_sha256"] == json.loads((shards / "snd_run.json").read_text())["identity"]["weights_sha256"]
    where = pq.read_table(shards / "index.parquet").to_pylist()
    assert where[17] == {"image_id": "im17", "shard": 1, "row": 1}
    assert "40 images in 3 shards" in capsys.readouterr().out

    dataset = load_features(shards, cache_dir=str(tmp_path / "hf_cache"))
    assert len(dataset) == 40
    row = dataset[4]
    assert row["image_id"] == "im04" and row["feature_map"].shape == (48, 3, 2)  # 60x40 -> 42x28 pixels
    torch.testing.assert_close(row["feature_map"], expected["im04"][0])
    torch.testing.assert_close(row["cls"], expected["im04"][1])
    streamed = next(iter(load_features(shards, streaming=True)))
    assert streamed["image_id"] == "im00" and torch.equal(streamed["feature_map"], dataset[0]["feature_map"])


def test_datasets_input_gives_the_features_of_the_files(images, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")  # the imagefolder's Arrow copy
    files = tmp_path / "files"
    assert main(extract(*images[:9], "--out", files)) == 0
    expected = per_image(files)
    folder = images[0].parent
    subset = tmp_path / "subset"  # an imagefolder of the first 9 images
    subset.mkdir()
    for path in images[:9]:
        (subset / path.name).write_bytes(path.read_bytes())
    streamed = tmp_path / "streamed"
    assert main(extract("--dataset", subset, "--streaming", "--out", streamed, "--format", "shards", "--shard-size", "4")) == 0
    assert_same_features(expected, read_rows(streamed))
    assert sorted(path.name for path in streamed.glob("shard-*")) == [f"shard-00000-of-00001-0000{k}.parquet" for k in range(3)]
    with pytest.raises(FileExistsError, match="holds the shards of another run"):  # a stream's shards are not listed
        main(extract("--dataset", subset, "--streaming", "--out", streamed, "--format", "shards", "--shard-size", "4") + ["--shortest-edge", "42", "--overwrite"])
    indexed = tmp_path / "indexed"  # the same folder as an indexed dataset, per-image layout
    assert main(extract("--dataset", subset, "--out", indexed)) == 0
    assert_same_features(expected, {k: {"feature_map": f, "cls": c} for k, (f, c) in per_image(indexed).items()})
    saved = tmp_path / "saved"  # a save_to_disk folder, its images embedded as bytes; the column chosen by name
    datasets.Dataset.from_dict({"picture": [str(path) for path in images[:3]], "label": [0, 1, 2]}).cast_column(
        "picture", datasets.Image()
    ).save_to_disk(saved)
    from_disk = tmp_path / "from_disk"
    assert main(extract("--dataset", saved, "--image-column", "picture", "--out", from_disk)) == 0
    assert_same_features(
        {k: expected[k] for k in ("im00", "im01", "im02")},
        {k: {"feature_map": f, "cls": c} for k, (f, c) in per_image(from_disk).items()},
    )
    with pytest.raises(ValueError, match=r"no column 'photo'; its columns are \['picture', 'label'\]"):
        main(extract("--dataset", saved, "--image-column", "photo", "--out", tmp_path / "x"))
    assert folder.is_dir()


def test_extract_refuses_unclear_inputs(images, tmp_path):
    with pytest.raises(ValueError, match="image files or --dataset, not both or neither"):
        main(extract(images[0], "--dataset", tmp_path, "--out", tmp_path / "x"))
    with pytest.raises(ValueError, match="--streaming writes --format shards"):
        main(extract("--dataset", tmp_path, "--streaming", "--out", tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_a_rerun_extracts_only_what_is_missing_and_refuses_other_settings(images, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(extract(*images[:3], "--out", out)) == 0
    (out / "im01_pca.png").unlink()  # as if the run had stopped between the two files of im01
    kept = {path.name: path.stat().st_mtime_ns for path in out.glob("im0[02]*")}
    capsys.readouterr()
    assert main(extract(*images[:3], "--out", out)) == 0
    assert "2 of 3 images already extracted; extracting the other 1" in capsys.readouterr().out
    assert {path.name: path.stat().st_mtime_ns for path in out.glob("im0[02]*")} == kept
    assert (out / "im01_pca.png").is_file()

    shards = tmp_path / "shards"
    assert main(extract(*images[:6], "--out", shards, "--format", "shards", "--shard-size", "2")) == 0
    (shards / "shard-00001-of-00003.parquet").unlink()
    before = {path.name: path.stat().st_mtime_ns for path in shards.glob("shard-*")}
    assert main(extract(*images[:6], "--out", shards, "--format", "shards", "--shard-size", "2")) == 0
    after = {path.name: path.stat().st_mtime_ns for path in shards.glob("shard-*")}
    assert after.keys() == before.keys() | {"shard-00001-of-00003.parquet"} and all(after[k] == v for k, v in before.items())
    assert len(read_rows(shards)) == 6
    for other in (["--shard-size", "3"], ["--shortest-edge", "42"]):  # another layout, another preprocessing
        with pytest.raises(FileExistsError, match="another run"):
            main(extract(*images[:6], "--out", shards, "--format", "shards", "--shard-size", "2") + other)
    with pytest.raises(FileExistsError, match="another run"):  # other images into the same shards
        main(extract(*images[1:7], "--out", shards, "--format", "shards", "--shard-size", "2"))


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(images, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(extract(*images, "--out", one)) == 0
    code, output = launch(extract(*images, "--out", two))
    assert code == 0, output
    written = re.findall(rf"{re.escape(str(two))}/(\w+)\.safetensors \(", output)  # each process's report per image
    assert sorted(written) == [path.stem for path in images]  # each image exactly once
    assert sorted(path.name for path in two.iterdir()) == sorted(path.name for path in one.iterdir())
    expected = per_image(one)
    assert_same_features(expected, {k: {"feature_map": f, "cls": c} for k, (f, c) in per_image(two).items()})
    assert json.loads((two / "snd_run.json").read_text())["status"] == "complete"
    code, output = launch(extract(*images, "--out", two) + ["--shortest-edge", "42"])  # refused by the main process...
    assert code != 0 and output.count("holds the results of another run") == 2, output  # ...and so by both

    streamed = tmp_path / "streamed"  # a streamed imagefolder, split between the processes by datasets
    code, output = launch(extract("--dataset", images[0].parent, "--streaming", "--out", streamed, "--format", "shards", "--shard-size", "8"))
    assert code == 0, output
    assert sorted(path.name for path in streamed.glob("shard-*")) == [
        f"shard-0000{rank}-of-00002-0000{k}.parquet" for rank in (0, 1) for k in (0, 1, 2)
    ]  # 20 images each: 8 + 8 + 4
    assert_same_features(expected, read_rows(streamed))


@pytest.mark.slow
def test_a_killed_process_leaves_whole_shards_and_the_rerun_completes_them(images, tmp_path):
    out = tmp_path / "shards"
    arguments = extract(*images, "--out", out, "--format", "shards", "--shard-size", "4")
    # Process 1 (shards 5-9) kills itself (SIGKILL) after 6 images: mid-way through its second shard.
    code, output = launch(arguments, script=[str(Path(__file__).with_name("extract_with_faults.py"))], SND_EXTRACT_KILL="1:6")
    assert code != 0
    # The main process either stopped on the broken process group ("failed") or was killed by the launcher.
    assert not (out / INDEX_JSON).exists() and json.loads((out / "snd_run.json").read_text())["status"] in ("failed", "running")
    first = {path.name: path.stat().st_mtime_ns for path in out.glob("shard-*.parquet")}
    assert "shard-00005-of-00010.parquet" in first and "shard-00006-of-00010.parquet" not in first
    for name in first:  # what the killed run left is whole
        assert pq.read_table(out / name).num_rows == 4

    code, output = launch(arguments)
    assert code == 0, output
    assert f"{len(first)} of 10 shards already written" in output
    assert no_temporaries(out)  # the killed process's half-written shard is gone
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in first.items())  # not rewritten
    index = json.loads((out / INDEX_JSON).read_text())
    assert index["images"] == 40 and len(index["shards"]) == 10
    ids = pq.read_table(out / "index.parquet").column("image_id").to_pylist()
    assert sorted(ids) == sorted(path.stem for path in images)  # every image exactly once
    reference = tmp_path / "reference"
    assert main(extract(*images, "--out", reference)) == 0
    assert_same_features(per_image(reference), read_rows(out))


def test_dtype_is_part_of_the_run(images, tmp_path):
    from snd_hf.extract import resolve_dtype

    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    full, half = tmp_path / "full", tmp_path / "half"
    assert main(extract(*images[:3], "--out", full, "--format", "shards")) == 0
    assert main(extract(*images[:3], "--out", half, "--format", "shards", "--dtype", "bfloat16")) == 0
    assert "dtype" not in json.loads((full / "snd_run.json").read_text())["identity"]  # float32 folders keep their identity
    assert json.loads((half / "snd_run.json").read_text())["identity"]["dtype"] == "torch.bfloat16"
    assert json.loads((half / INDEX_JSON).read_text())["dtype"] == "bfloat16"
    reference, rounded = read_rows(full), read_rows(half)
    for image_id, row in reference.items():  # float32 on disk either way, within bfloat16's rounding
        assert rounded[image_id]["feature_map"].dtype == torch.float32
        torch.testing.assert_close(rounded[image_id]["feature_map"], row["feature_map"], atol=0.1, rtol=0.05)
    with pytest.raises(FileExistsError, match="another run"):
        main(extract(*images[:3], "--out", half, "--format", "shards"))
