"""snd_hf/images.py, the one image decoder: EXIF orientation, bit depths, alpha, every PIL mode, the pixel cap.

Each expected value is prepared independently of the decoder: upright images rotated with numpy, 16-bit
files written byte by byte, composites computed with the alpha formula, modes converted by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from image_files import png16, png_bytes  # tests/ is on sys.path (rootdir conftest)
from PIL import Image

from snd_hf import SnDConfig, SnDImageProcessor, SnDModel
from snd_hf.data.frames import FrameReadError
from snd_hf.data.frames import open_image as open_frame
from snd_hf.images import (
    MAX_PIXELS,
    ImageDecodeError,
    load_rgb,
    open_image,
    probe_image,
    to_rgb,
)

# EXIF orientation -> how the stored pixels are made from the upright picture (numpy, [H, W, C]).
STORED_FROM_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: np.rot90(a, 2),
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # transposed (self-inverse)
    6: lambda a: np.rot90(a, 1),  # displayed after a quarter turn clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # transverse (self-inverse)
    8: lambda a: np.rot90(a, -1),  # displayed after a quarter turn anticlockwise
}


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return SnDModel(SnDConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56)).eval()


def features(model: SnDModel, processor: SnDImageProcessor, image) -> torch.Tensor:
    with torch.no_grad():
        return model(processor(image, return_tensors="pt").pixel_values).feature_map


# --- EXIF orientation -------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_upright_image(tmp_path, orientation, tiny_model):
    upright = random_rgb(42, 70, seed=orientation)  # not square: a wrong turn changes the shape
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"  # PNG keeps EXIF (eXIf chunk) and is lossless
    Image.fromarray(np.ascontiguousarray(STORED_FROM_UPRIGHT[orientation](upright))).save(path, exif=exif)

    np.testing.assert_array_equal(load_rgb(path), upright)
    # Scene frames keep the stored grid their cameras were calibrated on.
    assert np.asarray(open_image(path, orient=False)).shape[:2] == STORED_FROM_UPRIGHT[orientation](upright).shape[:2]
    processor = SnDImageProcessor(size={"shortest_edge": 42})
    expected = features(tiny_model, processor, Image.fromarray(upright))
    torch.testing.assert_close(features(tiny_model, processor, str(path)), expected, rtol=0, atol=0)
    with Image.open(path) as opened:  # a PIL image straight from Image.open still carries the tag
        torch.testing.assert_close(features(tiny_model, processor, opened), expected, rtol=0, atol=0)


def test_exif_rotated_jpeg_matches_its_pixels_turned_upright(tmp_path):
    upright = random_rgb(48, 64)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    Image.fromarray(np.ascontiguousarray(STORED_FROM_UPRIGHT[6](upright))).save(path, exif=exif, quality=95)
    with Image.open(path) as stored:
        turned = np.rot90(np.asarray(stored.convert("RGB")), -1)  # undo the stored quarter turn by hand
    assert load_rgb(path).shape == (48, 64, 3)
    np.testing.assert_array_equal(load_rgb(path), turned)


# --- bit depth and float data -------------------------------------------------------------------------


def test_16bit_grey_png_gives_the_features_of_its_8bit_conversion(tmp_path, tiny_model):
    deep = np.random.default_rng(1).integers(0, 65536, (70, 98), dtype=np.uint16)
    grey8 = np.round(deep / 257).astype(np.uint8)  # its 8-bit conversion (65535 / 255 = 257)
    (tmp_path / "grey16.png").write_bytes(png16(deep))
    Image.fromarray(grey8).save(tmp_path / "grey8.png")
    with Image.open(tmp_path / "grey16.png") as opened:
        assert opened.mode == "I;16"
    decoded = load_rgb(tmp_path / "grey16.png")
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, np.repeat(deep[..., None], 3, -1) / 65535, atol=1e-7)
    # Resized (8-bit resampling, as SnD): exactly the 8-bit image's features.
    processor = SnDImageProcessor(size={"shortest_edge": 56})
    expected = features(tiny_model, processor, str(tmp_path / "grey8.png"))
    torch.testing.assert_close(features(tiny_model, processor, str(tmp_path / "grey16.png")), expected, rtol=0, atol=0)
    # Not resized, the 16-bit precision is kept: the features of the float intensities v / 65535 ...
    processor = SnDImageProcessor(do_resize=False)
    unit = np.repeat(deep[..., None], 3, -1).astype(np.float32) / 65535
    with torch.no_grad():
        pixel_values = processor(unit, do_rescale=False, return_tensors="pt").pixel_values
        expected = tiny_model(pixel_values).feature_map
    torch.testing.assert_close(features(tiny_model, processor, str(tmp_path / "grey16.png")), expected, rtol=0, atol=0)
    # ... which for 8-bit content stored in 16 bits (v * 257) are the 8-bit image's features.
    (tmp_path / "twin16.png").write_bytes(png16(grey8.astype(np.uint16) * 257))
    expected = features(tiny_model, processor, str(tmp_path / "grey8.png"))
    torch.testing.assert_close(features(tiny_model, processor, str(tmp_path / "twin16.png")), expected, rtol=0, atol=1e-5)


def test_16bit_values_are_divided_by_65535_in_every_16bit_mode(tmp_path):
    values = np.random.default_rng(2).integers(0, 65536, (9, 11), dtype=np.uint16)
    expected = np.repeat(values[..., None], 3, -1).astype(np.float64) / 65535
    (tmp_path / "deep.png").write_bytes(png16(values))
    np.testing.assert_allclose(load_rgb(tmp_path / "deep.png"), expected, atol=1e-6)
    for dtype in ("<u2", ">u2"):  # I;16 and I;16B
        np.testing.assert_allclose(to_rgb(Image.fromarray(values.astype(dtype))), expected, atol=1e-6)
    np.testing.assert_allclose(to_rgb(Image.fromarray(values.astype(np.int32))), expected, atol=1e-6)  # mode I
    np.testing.assert_allclose(to_rgb(values), expected, atol=1e-6)  # uint16 array
    with pytest.raises(ImageDecodeError, match="16-bit range"):
        to_rgb(Image.fromarray(np.full((2, 2), 70000, dtype=np.int32)))


def test_16bit_rgb_png_reads_as_its_8bit_values(tmp_path):
    rgb8 = random_rgb(10, 12, seed=3)
    (tmp_path / "rgb16.png").write_bytes(png16(rgb8.astype(np.uint16) * 257))
    np.testing.assert_array_equal(load_rgb(tmp_path / "rgb16.png"), rgb8)


def test_float_images_are_intensities_in_0_1(tmp_path, tiny_model):
    rgb8 = random_rgb(28, 42, seed=4)
    unit = rgb8.astype(np.float32) / 255
    np.testing.assert_allclose(to_rgb(Image.fromarray(unit[..., 0])), np.repeat(unit[..., :1], 3, -1), atol=1e-7)
    with pytest.raises(ImageDecodeError, match=r"out of range \(\[0, 255\]"):
        to_rgb(Image.fromarray(np.array([[0.0, 255.0]], dtype=np.float32)))
    with pytest.raises(ImageDecodeError, match="non-finite"):
        to_rgb(np.array([[0.5, np.nan]], dtype=np.float32))

    # The processor: float arrays in transformers' convention give the features of the 8-bit image.
    processor = SnDImageProcessor(do_resize=False)
    expected = features(tiny_model, processor, Image.fromarray(rgb8))
    torch.testing.assert_close(features(tiny_model, processor, rgb8.astype(np.float32)), expected, atol=1e-5, rtol=0)
    with torch.no_grad():
        as_unit = tiny_model(processor(torch.from_numpy(unit).permute(2, 0, 1), do_rescale=False, return_tensors="pt").pixel_values)
    torch.testing.assert_close(as_unit.feature_map, expected, atol=1e-5, rtol=0)
    with pytest.raises(ImageDecodeError, match="do_rescale=False"):  # [0, 1] floats would be divided by 255 again
        processor(unit, return_tensors="pt")


# --- alpha ---------------------------------------------------------------------------------------------


def test_transparency_is_composited_over_white(tmp_path, tiny_model):
    color = random_rgb(28, 42, seed=5)
    alpha = np.random.default_rng(6).integers(0, 256, (28, 42), dtype=np.uint8)
    alpha[:4], alpha[4:8] = 0, 255  # fully transparent rows are white, opaque rows keep their colour
    rgba = np.concatenate([color, alpha[..., None]], axis=-1)
    # out = colour * a + white * (1 - a), a = alpha / 255, rounded to 8 bits
    a = alpha[..., None].astype(np.float64) / 255
    expected = np.round(color * a + 255 * (1 - a)).astype(np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(expected).save(tmp_path / "composited.png")

    decoded = load_rgb(tmp_path / "rgba.png")
    np.testing.assert_array_equal(decoded, expected)
    assert (decoded[:4] == 255).all() and (decoded[4:8] == color[4:8]).all()
    processor = SnDImageProcessor(size={"shortest_edge": 28})
    torch.testing.assert_close(
        features(tiny_model, processor, str(tmp_path / "rgba.png")),
        features(tiny_model, processor, str(tmp_path / "composited.png")),
        rtol=0,
        atol=0,
    )
    np.testing.assert_array_equal(to_rgb(rgba), expected)  # [H, W, 4] arrays too
    np.testing.assert_array_equal(to_rgb(Image.fromarray(rgba), background=(0, 0, 0)), np.round(color * a).astype(np.uint8))

    grey = color[..., 0]
    la = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)])
    expected_grey = np.round(grey * a[..., 0] + 255 * (1 - a[..., 0])).astype(np.uint8)
    np.testing.assert_array_equal(to_rgb(la), np.repeat(expected_grey[..., None], 3, -1))


def test_palette_transparency_is_composited(tmp_path):
    palette = Image.new("P", (3, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255, 10, 20, 30])
    palette.putdata([0, 1, 2])
    palette.save(tmp_path / "p.png", transparency=1)  # index 1 (blue) is transparent: a tRNS chunk
    np.testing.assert_array_equal(load_rgb(tmp_path / "p.png")[0], [[255, 0, 0], [255, 255, 255], [10, 20, 30]])


# --- other modes ---------------------------------------------------------------------------------------


def test_every_pillow_mode_gives_the_right_rgb():
    grey = np.array([[0, 64, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb(Image.fromarray(grey)), np.repeat(grey[..., None], 3, -1))  # L
    np.testing.assert_array_equal(to_rgb(Image.fromarray(grey > 100)), [[[0] * 3, [0] * 3, [255] * 3]])  # 1
    cmyk = Image.new("CMYK", (4, 1))
    cmyk.putdata([(255, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 0), (100, 50, 0, 60)])
    # naive CMYK: channel = (255 - ink) * (255 - black) / 255
    expected = [[0, 255, 255], [0, 0, 0], [255, 255, 255], [round(155 * 195 / 255), round(205 * 195 / 255), 195]]
    np.testing.assert_array_equal(to_rgb(cmyk)[0], expected)
    ycbcr = Image.new("YCbCr", (1, 1), (255, 128, 128))
    np.testing.assert_array_equal(to_rgb(ycbcr)[0, 0], [255, 255, 255])
    hsv = Image.new("HSV", (1, 1), (0, 255, 255))
    np.testing.assert_array_equal(to_rgb(hsv)[0, 0], [255, 0, 0])
    rgb = random_rgb(3, 5)
    np.testing.assert_array_equal(to_rgb(Image.fromarray(rgb).convert("RGBX")), rgb)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    np.testing.assert_array_equal(to_rgb(palette), np.asarray(palette.convert("RGB")))


def test_array_layouts_and_types():
    rgb = random_rgb(5, 6)
    np.testing.assert_array_equal(to_rgb(rgb.transpose(2, 0, 1)), rgb)  # [C, H, W]
    np.testing.assert_array_equal(to_rgb(torch.from_numpy(rgb)), rgb)  # a tensor, [H, W, C]
    np.testing.assert_array_equal(to_rgb(rgb[..., 0]), np.repeat(rgb[..., :1], 3, -1))  # [H, W]
    with pytest.raises(ImageDecodeError, match="int64 has no defined white"):
        to_rgb(rgb.astype(np.int64))
    with pytest.raises(ImageDecodeError, match="no channel axis"):
        to_rgb(np.zeros((5, 6, 7), dtype=np.uint8))


# --- the pixel cap and hostile files ---------------------------------------------------------------------


def test_decompression_bomb_is_a_named_error_before_decoding(tmp_path):
    # 30000 x 30000 declared, a few bytes of data: Pillow's own bomb check refuses it at open.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(30000, 30000, 1, 0, [b"\0" * 3750]))
    assert bomb.stat().st_size < 200
    for call in (lambda: load_rgb(bomb), lambda: probe_image(bomb), lambda: SnDImageProcessor()(str(bomb))):
        with pytest.raises(ImageDecodeError, match=r"bomb.png: too many pixels"):
            call()
    with pytest.raises(FrameReadError, match="too many pixels") as error:
        open_frame(bomb)
    assert error.value.kind == "too many pixels" and error.value.path == str(bomb)


def test_large_small_file_is_refused_by_the_cap_from_its_header(tmp_path):
    # A valid 13000 x 13000 1-bit PNG of ~20 kB: under Pillow's error limit, over MAX_PIXELS.
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(13000, 13000, 1, 0, (b"\0" * 1625 for _ in range(13000))))
    assert big.stat().st_size < 100_000 and 13000 * 13000 > MAX_PIXELS
    with pytest.raises(ImageDecodeError, match=r"big.png: too many pixels \(13000x13000 = 169,000,000 is over max_pixels"):
        open_image(big)
    # The cap is configurable everywhere images are read.
    small = tmp_path / "small.png"
    Image.fromarray(random_rgb(20, 20)).save(small)
    assert probe_image(small, max_pixels=400) == (20, 20)
    with pytest.raises(ImageDecodeError, match="over max_pixels = 399"):
        load_rgb(small, max_pixels=399)
    with pytest.raises(ImageDecodeError, match="over max_pixels = 399"):
        SnDImageProcessor(max_pixels=399)(str(small))
    assert SnDImageProcessor(max_pixels=399)(str(small), max_pixels=400).pixel_values[0].shape == (3, 448, 448)


def test_missing_truncated_and_non_image_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found: .*missing.png"):
        load_rgb(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageDecodeError, match="text.png: unreadable image"):
        load_rgb(tmp_path / "text.png")
    Image.fromarray(random_rgb(64, 64)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="cut.png: unreadable image"):
        load_rgb(tmp_path / "cut.png")


def test_scene_reader_counts_a_bomb_frame_as_a_skip(tmp_path):
    from snd_hf.data.scenes import SceneDataset
    from snd_hf.data.synthetic import generate_scenes

    root = generate_scenes(tmp_path / "scenes", num_scenes=2, num_frames=12, height=16, width=24, progress=False)
    bomb = root / "scenes" / "synth_0000" / "images" / "frame_000003.png"
    bomb.write_bytes(png_bytes(30000, 30000, 1, 0, [b"\0" * 3750]))
    dataset = SceneDataset(root, context_gap=11, num_targets=12, samples_per_scene=1)
    with pytest.warns(UserWarning, match="too many pixels"):
        samples = [dataset[i] for i in range(len(dataset))]
    assert [sample["scene"] for sample in samples] == ["synth_0001"] * 2  # scene 0 replaced by scene 1
    assert dataset.skipped.counts["too many pixels"] == 1 and dataset.skipped.paths["too many pixels"] == [str(bomb)]
    with pytest.raises(FrameReadError, match="frame_000003.png: too many pixels"):
        SceneDataset(root, on_error="raise", context_gap=11, num_targets=12)[0]
