"""SnDImageProcessor: aspect-preserving resize, snapping to the patch grid, normalisation, Auto/pipeline use."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, pipeline

from snd_hf import SnDConfig, SnDImageProcessor, SnDModel

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None]


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_snap_resize_rounds_down_like_snd_feature_extraction():
    processor = SnDImageProcessor(do_resize=False)
    pixel_values = processor(random_image(576, 880), return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 3, 574, 868) and pixel_values.dtype == torch.float32


def test_already_aligned_image_is_only_normalised():
    image = random_image(28, 42)
    pixel_values = SnDImageProcessor(do_resize=False)(image, return_tensors="np").pixel_values[0]
    expected = (np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255 - MEAN) / STD
    np.testing.assert_allclose(pixel_values, expected, rtol=1e-5, atol=1e-5)


def test_snap_pad_centres_the_image():
    image = random_image(30, 40)
    pixel_values = SnDImageProcessor(do_resize=False, snap="pad")(image, return_tensors="np").pixel_values[0]
    assert pixel_values.shape == (3, 42, 42)
    expected = (np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255 - MEAN) / STD
    # 12 extra rows: 6 above, 6 below; 2 extra columns: 1 left, 1 right. Padding is zero after normalisation.
    np.testing.assert_allclose(pixel_values[:, 6:36, 1:41], expected, rtol=1e-5, atol=1e-5)
    assert np.all(pixel_values[:, :6] == 0) and np.all(pixel_values[:, :, :1] == 0) and np.all(pixel_values[:, :, 41:] == 0)


def test_shortest_edge_resize_keeps_aspect_then_snaps():
    processor = SnDImageProcessor(size={"shortest_edge": 224})
    assert processor(random_image(300, 450), return_tensors="pt").pixel_values.shape == (1, 3, 224, 336)
    assert processor(random_image(450, 300), snap="none", return_tensors="pt").pixel_values.shape == (1, 3, 336, 224)
    assert processor(random_image(100, 300), return_tensors="pt").pixel_values.shape == (1, 3, 224, 672)
    assert processor(random_image(100, 310), return_tensors="pt").pixel_values.shape == (1, 3, 224, 686)


def test_invalid_options_and_mixed_sizes_are_explained():
    with pytest.raises(ValueError, match="snap must be"):
        SnDImageProcessor(snap="crop")
    assert SnDImageProcessor(snap="none", do_resize=False)(random_image(30, 40)).pixel_values[0].shape == (3, 30, 40)
    processor = SnDImageProcessor(do_resize=False)
    assert processor(random_image(30, 40), snap=None).pixel_values[0].shape == (3, 28, 28)  # None: the processor's own
    with pytest.raises(ValueError, match="cannot be stacked"):
        processor([random_image(28, 28), random_image(28, 42)], return_tensors="pt")
    assert [p.shape for p in processor([random_image(28, 28), random_image(28, 42)]).pixel_values] == [(3, 28, 28), (3, 28, 42)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("snd")
    torch.manual_seed(0)
    model = SnDModel(SnDConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56)).eval()
    model.save_pretrained(directory)
    SnDImageProcessor(size={"shortest_edge": 56}).save_pretrained(directory)
    return directory, model


def test_auto_image_processor_round_trip(checkpoint):
    directory, _ = checkpoint
    processor = AutoImageProcessor.from_pretrained(directory)
    assert isinstance(processor, SnDImageProcessor)
    assert processor.size.shortest_edge == 56 and processor.snap == "resize" and processor.patch_size == 14


def test_image_feature_extraction_pipeline(checkpoint):
    directory, model = checkpoint
    image = random_image(60, 90)
    extractor = pipeline("image-feature-extraction", model=str(directory))
    features = extractor(image, return_tensors=True)
    pixel_values = SnDImageProcessor(size={"shortest_edge": 56})(image, return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 3, 56, 84)
    with torch.no_grad():
        expected = model(pixel_values).last_hidden_state
    torch.testing.assert_close(features, expected)


def _check_processor_and_pipeline(location, model: SnDModel, shortest_edge: int = 448, grid: tuple[int, int] = (32, 48)) -> None:
    """AutoImageProcessor and pipeline() work on `location` and give SnDModel + SnDImageProcessor's features
    (a 60x90 image resized to ``shortest_edge``: a ``grid`` of patches)."""
    processor = AutoImageProcessor.from_pretrained(location)
    reference = SnDImageProcessor(size={"shortest_edge": shortest_edge})
    assert isinstance(processor, SnDImageProcessor) and processor.to_dict() == reference.to_dict()
    image = random_image(60, 90)
    with torch.no_grad():
        expected = model(reference(image, return_tensors="pt").pixel_values).last_hidden_state
    assert expected.shape[1] == 1 + grid[0] * grid[1]  # 448 x 672 by default
    features = pipeline("image-feature-extraction", model=str(location))(image, return_tensors=True)
    torch.testing.assert_close(features, expected)


def _tiny_model(seed: int = 0) -> SnDModel:
    torch.manual_seed(seed)
    return SnDModel(SnDConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56)).eval()


def test_every_checkpoint_the_package_writes_carries_its_processor_config(tmp_path):
    from snd_hf.convert import original_to_native
    from snd_hf.demo import DEFAULT_CHECKPOINT
    from snd_hf.loading import save_original_checkpoint
    from snd_hf.training.export import save_native

    model = _tiny_model()
    model.save_pretrained(tmp_path / "saved")  # our API
    save_native(model, tmp_path / "trained", training_info={"step": 1})  # the trainer's export
    save_original_checkpoint(model, tmp_path / "original.pth")
    original_to_native(tmp_path / "original.pth", tmp_path / "converted", num_attention_heads=2)  # snd convert
    for name in ("saved", "trained", "converted"):
        _check_processor_and_pipeline(tmp_path / name, model)
    # shipped: the default run's student, whose processor feeds the 84-pixel edge it trained at
    _check_processor_and_pipeline(DEFAULT_CHECKPOINT, SnDModel.from_pretrained(DEFAULT_CHECKPOINT), 84, (6, 9))

    # A processor config already in the folder is the user's: saving the model again keeps it.
    SnDImageProcessor(size={"shortest_edge": 56}).save_pretrained(tmp_path / "saved")
    model.save_pretrained(tmp_path / "saved")
    assert AutoImageProcessor.from_pretrained(tmp_path / "saved").size.shortest_edge == 56


def test_pushed_checkpoints_carry_their_processor_config(hub, tmp_path):
    model = _tiny_model()
    model.push_to_hub("user/pushed")
    model.save_pretrained(tmp_path / "user-saved", push_to_hub=True, repo_id="user/saved-and-pushed")
    for repo in ("user/pushed", "user/saved-and-pushed"):
        assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(hub.files(repo))
        _check_processor_and_pipeline(repo, model)


def test_a_tiny_image_blown_up_is_said_aloud_and_a_routine_upscale_is_not(recwarn):
    processor = SnDImageProcessor()
    with pytest.warns(UserWarning, match=r"an image of 8x10 pixels \(HxW\) is upscaled 56x to 448x560"):
        assert processor(np.zeros((8, 10, 3), np.uint8), return_tensors="pt").pixel_values.shape == (1, 3, 448, 560)
    recwarn.clear()
    processor(np.zeros((224, 300, 3), np.uint8), return_tensors="pt")  # 2x: routine
    assert not [w for w in recwarn if "upscaled" in str(w.message)]


def test_a_folder_of_tiny_images_is_one_warning_per_size_not_one_per_image(recwarn):
    processor = SnDImageProcessor(size={"shortest_edge": 56})
    for _ in range(3):
        with warnings.catch_warnings():  # as decoding each image does: it resets Python's once-per-place memory
            warnings.simplefilter("ignore", DeprecationWarning)
        processor(np.zeros((5, 7, 3), np.uint8), return_tensors="pt")
    processor(np.zeros((7, 5, 3), np.uint8), return_tensors="pt")
    upscaled = [str(w.message) for w in recwarn if "upscaled" in str(w.message)]
    assert [message.split(":")[0] for message in upscaled] == [
        "an image of 5x7 pixels (HxW) is upscaled 10x to 56x70",
        "an image of 7x5 pixels (HxW) is upscaled 10x to 70x56",
    ]
