"""`snd extract` and `snd demo` (snd_hf/extract.py, snd_hf/demo.py)."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import snd_hf.extract
from snd_hf import SnDConfig, SnDImageProcessor, SnDModel
from snd_hf.cli import main
from snd_hf.demo import DEFAULT_CHECKPOINT, DEMO_IMAGES, EMBEDDED
from snd_hf.hub import SND_HUB_REPO, VARIANT_FILES
from snd_hf.images import ImageDecodeError
from snd_hf.visualization import CAPTION_SIZE, pca_rgb


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    config = SnDConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=224)
    model = SnDModel(config).eval()
    model.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny", model


def write_image(path, height, width, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_extract_writes_features_and_pictures(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    folder, model = tiny_checkpoint
    first = write_image(tmp_path / "first.png", 60, 80)
    second = write_image(tmp_path / "second.jpg", 50, 50, seed=1)
    out = tmp_path / "out"
    texts = []
    panel = snd_hf.extract.save_panel
    monkeypatch.setattr(snd_hf.extract, "save_panel", lambda *a, **k: texts.append((k["title"], k["labels"])) or panel(*a, **k))
    assert main(["extract", str(first), str(second), "--model", str(folder), "--out", str(out), "--shortest-edge", "56"]) == 0

    processor = SnDImageProcessor(size={"shortest_edge": 56})
    for path, grid in ((first, (4, 5)), (second, (4, 4))):  # 56x74 -> 56x70 and 56x56
        with safe_open(out / f"{path.stem}.safetensors", "pt") as handle:
            feature_map, cls = handle.get_tensor("feature_map"), handle.get_tensor("cls")
            metadata = handle.metadata()
        assert feature_map.shape == (32, *grid) and cls.shape == (32,)
        assert metadata["model"] == str(folder) and json.loads(metadata["input_size"]) == [grid[0] * 14, grid[1] * 14]
        with Image.open(path) as image:
            expected = model(processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"])
        torch.testing.assert_close(feature_map, expected.feature_map[0])
        torch.testing.assert_close(cls, expected.pooler_output[0])
        _check_pca_picture(out / f"{path.stem}_pca.png", path, processor, feature_map)
    assert f"{out / 'first.safetensors'} (32x4x5)" in capsys.readouterr().out
    assert texts[0] == (
        f"{folder}: 4x5 patches of 14x14 px; colours: the first 3 principal components of the features",
        ["image, 56x70 px", "features, 4x5 grid"],
    )


def _check_pca_picture(picture_path, image_path, processor, feature_map, gap=4):
    """The picture is [title and labels above] image | gap | PCA: the resized image exactly as the model saw
    it, beside one 14x14 block per patch of the features' own PCA colours."""
    channels, height, width = feature_map.shape
    picture = np.asarray(Image.open(picture_path).convert("RGB"))
    top = picture.shape[0] - height * 14
    assert picture.shape[1] == 2 * width * 14 + gap and top > 0
    with Image.open(image_path) as image:
        seen = processor(images=image.convert("RGB"), do_normalize=False, return_tensors="pt")["pixel_values"][0]
    expected_image = (seen.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(picture[top:, : width * 14], expected_image)
    blocks = pca_rgb(feature_map).repeat(14, axis=0).repeat(14, axis=1)
    np.testing.assert_array_equal(picture[top:, width * 14 + gap :], blocks)
    assert (picture[top:, width * 14 : width * 14 + gap] == 255).all()  # the white gap
    # Title (the model, the grid) and one label above each half: dark text on the white band.
    band = picture[:top].min(axis=2) < 128
    assert band[:, : width * 14].any() and band[:, width * 14 + gap :].any()
    label_row = band[top - CAPTION_SIZE - 6 :]
    assert label_row[:, : width * 14].any() and label_row[:, width * 14 + gap :].any()


def test_extract_names_missing_and_unreadable_images(tmp_path, tiny_checkpoint):
    folder, _ = tiny_checkpoint
    good = write_image(tmp_path / "good.png", 30, 30)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        main(["extract", str(good), str(tmp_path / "missing.png"), "--model", "not/loaded", "--out", str(tmp_path)])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        main(["extract", str(tmp_path / "broken.png"), "--model", str(folder), "--out", str(tmp_path / "out")])
    other = tmp_path / "other"
    other.mkdir()
    write_image(other / "good.png", 30, 30)
    with pytest.raises(ValueError, match="good.safetensors"):
        main(["extract", str(good), str(other / "good.png"), "--model", str(folder), "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="other is a folder, not an image"):
        main(["extract", str(other), "--model", "not/loaded", "--out", str(tmp_path / "out")])
    # Several bad files: one run names them all, each with what is wrong.
    with pytest.raises(ValueError) as error:
        main(["extract", str(tmp_path / "missing.png"), str(good), str(tmp_path / "broken.png"), "--model", "not/loaded", "--out", str(tmp_path / "out")])
    assert str(error.value).startswith(f"2 of 3 images cannot be used: image not found: {tmp_path / 'missing.png'}; {tmp_path / 'broken.png'}: unreadable image")
    assert not (tmp_path / "out").exists()  # nothing written before the inputs were checked


def test_demo_offline_uses_embedded_checkpoint(hub, tmp_path, capsys):
    hub.set_offline(True)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"model: {EMBEDDED}" in printed and str(out / "panel.png") in printed
    stems = sorted(path.stem for path in DEMO_IMAGES.glob("*.png"))
    assert len(stems) >= 2
    embedded = SnDModel.from_pretrained(DEFAULT_CHECKPOINT)
    processor = SnDImageProcessor(size={"shortest_edge": 224})
    for stem in stems:
        with safe_open(out / f"{stem}.safetensors", "pt") as handle:
            feature_map = handle.get_tensor("feature_map")
        with Image.open(DEMO_IMAGES / f"{stem}.png") as image:
            pixel_values = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(feature_map, embedded(pixel_values).feature_map[0])
        assert (out / f"{stem}_pca.png").is_file()
    panel = Image.open(out / "panel.png")
    height = feature_map.shape[1] * 14
    # image | features per view, under a title and one caption per column
    assert height < panel.height < height + 100 and panel.width > 2 * len(stems) * height
    # The correspondence picture: the 2D-pretrained start (left) and the SnD model (right), two views each.
    assert "correspondence view0 -> view1" in printed and str(out / "correspondence.png") in printed
    recalls = re.search(r"before SnD\) ([0-9.]+), SnD ([0-9.]+)\)", printed)
    assert recalls is not None
    start, snd = float(recalls.group(1)), float(recalls.group(2))
    # The packaged pair's recalls (README: 310 and 502 of 1000 matches here; a few matches of slack
    # for other CPUs' float rounding): SnD training shows on the embedded checkpoint.
    assert abs(start - 0.31) <= 0.01 and abs(snd - 0.50) <= 0.01, printed
    with Image.open(DEMO_IMAGES / "view0.png") as view:
        assert Image.open(out / "correspondence.png").width > 4 * view.width


@pytest.mark.slow
def test_demo_prefers_the_published_weights_when_the_hub_answers(hub, tmp_path, fixtures_dir, capsys):
    # A ViT-S/14 state dict in the original layout (zeros: only the key set and shapes matter here).
    shapes = json.loads((fixtures_dir / "dinov2" / "dinov2_vits14_keys.json").read_text())
    buffer = io.BytesIO()
    torch.save({key: torch.zeros(shape) for key, shape in shapes.items()}, buffer)
    hub.add_file(SND_HUB_REPO, VARIANT_FILES[("small", True)], buffer.getvalue())
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--images", str(DEMO_IMAGES / "view0.png")]) == 0
    assert f"model: {SND_HUB_REPO}" in capsys.readouterr().out
    with safe_open(out / "view0.safetensors", "pt") as handle:
        assert handle.get_tensor("feature_map").shape[0] == 384
        assert handle.metadata()["model"] == SND_HUB_REPO
    # A variant the repo does not have falls back to the embedded checkpoint, saying why.
    assert main(["demo", "--out", str(out), "--size", "base"]) == 0
    printed = capsys.readouterr().out
    assert "dinov2_base_snd.pth" in printed and f"model: {EMBEDDED}" in printed


def test_extract_streams_one_batch_at_a_time(tmp_path, tiny_checkpoint, monkeypatch):
    """Memory does not grow with the number of images: when an image is decoded, no earlier decoded image
    is alive and at most one batch waits for the model."""
    import weakref

    import snd_hf.extract as extract

    folder, model = tiny_checkpoint
    # 7 images, two aspect ratios (a change of size also ends a batch), batches of 2
    shapes = [(40, 60), (40, 60), (40, 60), (60, 40), (40, 60), (40, 60), (40, 60)]
    paths = [write_image(tmp_path / f"im{i}.png", *shape, seed=i) for i, shape in enumerate(shapes)]
    decoded, events = [], []  # weak references to every decoded image; (event, decoded images alive)

    def alive():
        return sum(reference() is not None for reference in decoded)

    decode, save = extract.open_image, extract.save_features

    def tracked_decode(path, **options):
        events.append(("decode", alive()))
        image = decode(path, **options)
        decoded.append(weakref.ref(image))
        return image

    def tracked_save(*args, **kwargs):
        events.append(("write", alive()))
        return save(*args, **kwargs)

    monkeypatch.setattr(extract, "open_image", tracked_decode)
    monkeypatch.setattr(extract, "save_features", tracked_save)
    out = tmp_path / "out"
    args = ["extract", *map(str, paths), "--model", str(folder), "--out", str(out), "--shortest-edge", "28", "--batch-size", "2"]
    assert main(args) == 0

    assert [kind for kind, _ in events].count("decode") == 7 and all(count == 0 for _, count in events)
    waiting = 0  # decoded, not yet written
    for kind, _ in events:
        waiting += 1 if kind == "decode" else -1
        assert waiting <= 3  # one full batch of 2 plus the image that closes it
    assert [kind for kind, _ in events][:4] == ["decode", "decode", "decode", "write"]
    processor = SnDImageProcessor(size={"shortest_edge": 28})
    for path in paths:  # batching changes nothing: each file holds its own image's features
        with safe_open(out / f"{path.stem}.safetensors", "pt") as handle:
            feature_map = handle.get_tensor("feature_map")
        with torch.no_grad():
            expected = model(processor(str(path), return_tensors="pt").pixel_values).feature_map[0]
        torch.testing.assert_close(feature_map, expected, atol=1e-5, rtol=1e-5)


def test_extract_never_mixes_models_in_one_folder(tmp_path, tiny_checkpoint, capsys):
    from snd_hf.loading import weights_hash

    folder, model = tiny_checkpoint
    torch.manual_seed(1)
    other = SnDModel(SnDConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=224)).eval()
    other.save_pretrained(tmp_path / "other")
    first, second = write_image(tmp_path / "first.png", 40, 60), write_image(tmp_path / "second.png", 40, 60, seed=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")

    def extract(*arguments):
        return main(["extract", *arguments, "--out", str(out), "--shortest-edge", "28"])

    with pytest.raises(FileExistsError, match=r"out is not empty \(notes.txt\) and no snd run wrote it"):
        extract(str(first), "--model", str(folder))  # a user's folder: written into only when asked
    assert [path.name for path in out.iterdir()] == ["notes.txt"]
    assert extract(str(first), "--model", str(folder), "--overwrite") == 0
    record = json.loads((out / "snd_run.json").read_text())
    assert record["identity"]["weights_sha256"] == weights_hash(model) and record["status"] == "complete"
    assert record["identity"]["processor"]["size"] == {"shortest_edge": 28}
    assert record["outputs"] == ["first.safetensors", "first_pca.png"] and record["info"]["model"] == str(folder)
    with safe_open(out / "first.safetensors", "pt") as handle:
        assert handle.metadata()["weights_sha256"] == weights_hash(model)
    assert extract(str(second), "--model", str(folder)) == 0  # same model: the folder grows
    assert json.loads((out / "snd_run.json").read_text())["outputs"][:2] == ["first.safetensors", "first_pca.png"]

    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(FileExistsError, match="another run of another model.*differs in weights_sha256.*--overwrite"):
        extract(str(first), "--model", str(tmp_path / "other"))
    with pytest.raises(FileExistsError, match="differs in processor;"):  # other preprocessing, same weights
        main(["extract", str(first), "--model", str(folder), "--out", str(out), "--shortest-edge", "42"])
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before

    assert extract(str(first), "--model", str(tmp_path / "other"), "--overwrite") == 0
    assert "removed the 2 files of the earlier run that this one did not rewrite" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == [
        "first.safetensors", "first_pca.png", "notes.txt", "snd_run.json"
    ]  # second.* went with the first model
    with safe_open(out / "first.safetensors", "pt") as handle:
        assert handle.metadata()["weights_sha256"] == weights_hash(other)


def test_extract_names_a_decompression_bomb_before_loading_the_model(tmp_path):
    from image_files import png_bytes  # tests/ is on sys.path (rootdir conftest)

    good = write_image(tmp_path / "good.png", 30, 30)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(30000, 30000, 1, 0, [b"\0" * 3750]))  # 30000 x 30000 declared in ~100 bytes
    with pytest.raises(ImageDecodeError, match="bomb.png: too many pixels"):
        main(["extract", str(good), str(bomb), "--model", "not/loaded", "--out", str(tmp_path / "out")])
    with pytest.raises(ImageDecodeError, match=r"good.png: too many pixels \(30x30 = 900 is over max_pixels = 899"):
        main(["extract", str(good), "--model", "not/loaded", "--out", str(tmp_path / "out"), "--max-pixels", "899"])
    assert not (tmp_path / "out").exists()


def test_odd_names_out_inside_the_inputs_and_extreme_aspect_ratios(tiny_checkpoint, tmp_path, capsys):
    from snd_hf.cli import console_main

    folder, _ = tiny_checkpoint
    photos = tmp_path / "my photos"
    photos.mkdir()
    odd = photos / "-été 1 ..png"  # a space, unicode, a leading dash, dots
    write_image(odd, 40, 60)
    before = {path.name: path.read_bytes() for path in photos.iterdir()}
    options = ["--model", str(folder), "--shortest-edge", "28"]
    # --out equal to the input folder: a folder no snd run wrote is refused, the inputs untouched.
    assert console_main(["extract", str(odd), *options, "--out", str(photos)]) == 2
    assert "my photos is not empty (-été 1 ..png) and no snd run wrote it" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in photos.iterdir()} == before
    # ... with --overwrite it writes beside them, the inputs byte-identical; --out inside it is fine too.
    for out in (photos, photos / "features" / ".." / "features"):
        assert console_main(["extract", str(odd), *options, "--out", str(out), "--overwrite"]) == 0
        assert (out / "-été 1 ..safetensors").is_file() and (out / "-été 1 ._pca.png").is_file()
        assert (photos / odd.name).read_bytes() == before[odd.name]

    # A 1x20000 strip brought to a shortest edge of 448 would be 448x8960000: one line naming the
    # file before anything is allocated (it used to be killed for memory), and no feature written.
    strip = tmp_path / "strip.png"
    Image.fromarray(np.zeros((1, 20000, 3), np.uint8)).save(strip)
    out = tmp_path / "strip_out"
    assert console_main(["extract", str(strip), "--model", str(folder), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"snd: error: {strip}: an image of 1x20000 pixels would be resized to 448x8960000")
    assert "more than max_pixels (134217728)" in error
    assert not list(out.glob("*.safetensors")) and not list(out.glob("*.png"))
