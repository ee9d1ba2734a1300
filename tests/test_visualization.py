"""PCA colouring and PNG writing (snd_hf.visualization)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from snd_hf.visualization import CAPTION_SIZE, fit_pca, pca_rgb, save_panel, save_png


def _ramp_features(channels: int = 8, height: int = 4, width: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-one maps: a fixed direction times a ramp over the pixels, plus a constant offset."""
    direction = torch.linspace(-0.5, 1.0, channels)  # largest loading positive
    ramp = torch.arange(height * width, dtype=torch.float32).reshape(height, width)
    return direction[:, None, None] * ramp + 3.0, ramp


def test_pca_rgb_rank_one_maps_ramp_to_red():
    features, ramp = _ramp_features()
    rgb = pca_rgb(features, quantile=0.0)
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    expected = np.round(ramp.numpy() / ramp.max().item() * 255).astype(np.uint8)
    np.testing.assert_allclose(rgb[..., 0].astype(int), expected.astype(int), atol=1)
    # The other components carry no variance: they sit at the bottom of their (empty) range.
    assert rgb[..., 1:].max() == 0


def test_pca_rgb_sign_and_rotation_invariance():
    features, _ = _ramp_features()
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    rotated = torch.einsum("dc,chw->dhw", rotation, features)
    flipped = -features
    # A rotated or negated copy of the same data gets the same first component (up to sign fixing).
    red = pca_rgb(features, quantile=0.0)[..., 0].astype(int)
    for other in (rotated, flipped):
        other_red = pca_rgb(other, quantile=0.0)[..., 0].astype(int)
        assert np.abs(other_red - red).max() <= 1 or np.abs(other_red - (255 - red)).max() <= 1


def test_pca_rgb_batch_shares_one_projection():
    first, second = torch.randn(16, 6, 7), torch.randn(16, 6, 7) * 2
    batch = pca_rgb(torch.stack([first, second]))
    assert batch.shape == (2, 6, 7, 3)
    projection = fit_pca(torch.stack([first, second]))
    np.testing.assert_array_equal(pca_rgb(second, projection=projection), batch[1])


def test_pca_rgb_robust_scaling_clips_outliers():
    features, _ = _ramp_features(height=10, width=10)
    features[:, 0, 0] = 1e4  # one extreme pixel
    rgb = pca_rgb(features, quantile=0.05)
    # The outlier saturates; the rest still spans most of the colour range.
    assert rgb[0, 0, 0] in (0, 255)
    assert np.ptp(rgb[1:, :, 0].astype(int)) > 150


def test_pca_rgb_rejects_bad_input():
    with pytest.raises(ValueError, match="features"):
        pca_rgb(torch.randn(5, 5))
    with pytest.raises(TypeError, match="features"):
        pca_rgb(np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="channels"):
        pca_rgb(torch.randn(4, 3, 3), projection=fit_pca(torch.randn(5, 3, 3)))


def test_save_png_and_panel_round_trip(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    path = save_png(image, tmp_path / "sub" / "a.png", scale=3)
    loaded = np.asarray(Image.open(path))
    assert loaded.shape == (9, 12, 3)
    np.testing.assert_array_equal(loaded[::3, ::3], image)
    assert [p.name for p in path.parent.iterdir()] == ["a.png"]  # no temporary left behind

    float_image = torch.rand(3, 6, 8)  # channels-first float in [0, 1]
    panel = np.asarray(Image.open(save_panel([image, float_image], tmp_path / "panel.png", gap=2)))
    assert panel.shape == (6, 8 + 2 + 8, 3)
    np.testing.assert_array_equal(panel[::2, :8:2], image)
    assert (panel[:, 8:10] == 255).all()
    expected = (float_image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(panel[:, 10:], expected)


def test_panel_title_wraps_and_labels_sit_above_their_images(tmp_path):
    images = [np.zeros((40, 60, 3), dtype=np.uint8), np.full((40, 60, 3), 128, dtype=np.uint8)]
    title = "a title long enough to need wrapping over a panel this narrow\nand a second paragraph"
    panel = np.asarray(Image.open(save_panel(images, tmp_path / "p.png", gap=4, title=title, labels=["left", "right"])))
    line = CAPTION_SIZE + 4
    # Title lines (wrapped to 124 px), one label line, the gap, then the images unchanged at the bottom.
    assert panel.shape[1] == 124 and (panel.shape[0] - 40 - line - 4) % line == 0 and panel.shape[0] > 40 + 4 * line
    np.testing.assert_array_equal(panel[-40:, :60], images[0])
    np.testing.assert_array_equal(panel[-40:, 64:], images[1])
    assert (panel[: line * 2] < 128).any()  # dark title text at the top
    with pytest.raises(ValueError, match="one caption per image"):
        save_panel(images, tmp_path / "q.png", labels=["only one"])
