"""Mask-aware upsampling and segment blending against the original's outputs (fixtures)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from snd_hf.splatting.masks import blend_with_mask, mask_aware_upsample, resize_masks


@pytest.fixture(scope="module")
def mask_ops(fixtures_dir):
    return load_file(fixtures_dir / "mask_ops" / "mask_ops_public.safetensors")


@pytest.mark.parametrize("case", [0, 1])
def test_mask_aware_upsample_matches_the_original(mask_ops, case):
    features, masks = mask_ops[f"upsample{case}/feats_lr"], mask_ops[f"upsample{case}/mask_hr"]
    expected, valid = mask_ops[f"upsample{case}/expected"], mask_ops[f"upsample{case}/has_valid_neighbour"]
    out = mask_aware_upsample(features, masks)
    torch.testing.assert_close(out[:, valid], expected[:, valid], atol=1e-5, rtol=0)
    # Deviation: where the original outputs 0 (no valid neighbour) we fall back to plain bilinear.
    plain = F.interpolate(features[None], size=masks.shape, mode="bilinear", align_corners=True)[0]
    torch.testing.assert_close(out[:, ~valid], plain[:, ~valid], atol=1e-6, rtol=0)


def test_upsample_fixture_has_pixels_without_a_valid_neighbour(mask_ops):
    assert (~mask_ops["upsample0/has_valid_neighbour"]).sum() > 0


def _per_pixel_reference(features, masks):
    """The original's rule, one pixel at a time (slow, tiny inputs only)."""
    channels, low_height, low_width = features.shape
    height, width = masks.shape
    out = torch.zeros(channels, height, width, dtype=torch.float64)
    for i in range(height):
        for j in range(width):
            y, x = i * (low_height - 1) / (height - 1), j * (low_width - 1) / (width - 1)
            y0, x0 = int(y), int(x)
            total, value, plain = 0.0, 0.0, 0.0
            for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
                p, q = min(y0 + dy, low_height - 1), min(x0 + dx, low_width - 1)
                weight = (y - y0 if dy else 1 - (y - y0)) * (x - x0 if dx else 1 - (x - x0))
                label = masks[round(p * (height - 1) / (low_height - 1)), round(q * (width - 1) / (low_width - 1))]
                plain = plain + weight * features[:, p, q].double()
                if label == masks[i, j]:
                    total, value = total + weight, value + weight * features[:, p, q].double()
            out[:, i, j] = value / total if total > 0 else plain
    return out


def test_mask_aware_upsample_batches_and_arbitrary_labels_match_a_per_pixel_reference():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 4, 4, 5, generator=generator)
    labels = torch.tensor([-7, 0, 3, 10**12])
    masks = labels[torch.randint(0, 4, (2, 3, 3, 4), generator=generator)]
    masks = resize_masks(masks, (13, 17))  # blocky segments, like real instances
    out = mask_aware_upsample(features, masks)
    assert out.shape == (2, 3, 4, 13, 17)
    for index in [(0, 0), (1, 2)]:
        torch.testing.assert_close(out[index].double(), _per_pixel_reference(features[index], masks[index]), atol=1e-5, rtol=0)


def test_mask_aware_upsample_with_one_segment_is_plain_bilinear():
    features = torch.randn(2, 6, 5, 7)
    out = mask_aware_upsample(features, torch.full((2, 40, 52), 3))
    torch.testing.assert_close(out, F.interpolate(features, size=(40, 52), mode="bilinear", align_corners=True))


@pytest.mark.parametrize("case", [0, 1])
def test_blend_with_mask_matches_the_original(mask_ops, case):
    out = blend_with_mask(mask_ops[f"blend{case}/features"], mask_ops[f"blend{case}/masks"], float(mask_ops[f"blend{case}/alpha"]))
    torch.testing.assert_close(out, mask_ops[f"blend{case}/expected"], atol=1e-5, rtol=0)


def test_blend_with_unit_weights_is_the_original_and_alpha_one_is_identity(mask_ops):
    features, masks = mask_ops["blend0/features"], mask_ops["blend0/masks"]
    ones = torch.ones(features.shape[0], features.shape[1], *features.shape[-2:])
    torch.testing.assert_close(blend_with_mask(features, masks, 0.5, ones), mask_ops["blend0/expected"], atol=1e-5, rtol=0)
    assert torch.equal(blend_with_mask(features, masks, 1.0), features)


def test_weighted_segment_means_ignore_uncovered_pixels():
    # One view, two segments: left half (label 5) and right half (label 9).
    features = torch.tensor([[1.0, 3.0, 0.0, 10.0], [1.0, 3.0, 20.0, 0.0]])[None, None, None]  # [1, 1, 1, 2, 4]
    masks = torch.tensor([[5, 5, 9, 9], [5, 5, 9, 9]])[None, None]
    coverage = (features[:, :, 0] != 0).float()  # the zeros are uncovered
    plain = blend_with_mask(features, masks, 0.5)
    weighted = blend_with_mask(features, masks, 0.5, coverage)
    # Left: both means are 2. Right: plain mean 30 / 4 = 7.5, covered mean 30 / 2 = 15.
    torch.testing.assert_close(plain[0, 0, 0], 0.5 * features[0, 0, 0] + 0.5 * torch.tensor([[2.0, 2, 7.5, 7.5]] * 2))
    torch.testing.assert_close(weighted[0, 0, 0], 0.5 * features[0, 0, 0] + 0.5 * torch.tensor([[2.0, 2, 15, 15]] * 2))
    # A fully uncovered segment falls back to its plain mean.
    fallback = blend_with_mask(features, masks, 0.5, torch.zeros(1, 1, 2, 4))
    torch.testing.assert_close(fallback, plain)


def test_segments_are_per_view():
    features = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])[None]  # [1, 2, 1, 2, 2]
    masks = torch.zeros(1, 2, 2, 2, dtype=torch.long)  # the same id in both views
    torch.testing.assert_close(blend_with_mask(features, masks, 0.0), features)


def test_resize_masks_is_torch_nearest():
    masks = torch.randint(0, 50, (2, 3, 17, 23))
    for size in [(40, 60), (8, 11), (34, 46), (17, 23)]:
        expected = F.interpolate(masks.float(), size=size, mode="nearest").long()
        assert torch.equal(resize_masks(masks, size), expected)


def test_invalid_masks_raise_errors_naming_them():
    with pytest.raises(TypeError, match="masks"):
        mask_aware_upsample(torch.zeros(2, 3, 3), torch.zeros(5, 5))
    with pytest.raises(ValueError, match="masks"):
        mask_aware_upsample(torch.zeros(2, 2, 3, 3), torch.zeros(3, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="masks"):
        blend_with_mask(torch.zeros(1, 2, 3, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="weights"):
        blend_with_mask(torch.zeros(1, 1, 3, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long), 0.5, torch.ones(1, 1, 3, 3))


def test_blend_in_place_and_into_out_match_the_allocating_call(mask_ops):
    features, masks = mask_ops["blend0/features"], mask_ops["blend0/masks"]
    alpha = float(mask_ops["blend0/alpha"])
    expected = blend_with_mask(features, masks, alpha)
    out = torch.empty_like(features)
    assert blend_with_mask(features, masks, alpha, out=out) is out
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    in_place = features.clone()
    blend_with_mask(in_place, masks, alpha, out=in_place)
    torch.testing.assert_close(in_place, mask_ops["blend0/expected"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="`out`"):
        blend_with_mask(features, masks, alpha, out=torch.empty(3))


def test_blend_with_large_sparse_ids_matches_a_per_segment_loop():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1, 2, 4, 24, 24, generator=generator)
    labels = torch.randint(0, 300, (1, 2, 24, 24), generator=generator) * 1000  # compacted by a sort
    blended = blend_with_mask(features, labels, 0.3)
    for view in range(2):
        for label in labels[0, view].unique():
            region = labels[0, view] == label
            mean = features[0, view][:, region].mean(1, keepdim=True)
            torch.testing.assert_close(blended[0, view][:, region], 0.3 * features[0, view][:, region] + 0.7 * mean)


INTEGER_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32, torch.uint64]


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=str)
def test_every_integer_mask_dtype_blends_and_upsamples_like_int64(dtype):
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(1, 2, 3, 12, 10, generator=generator)
    labels = torch.randint(0, 5, (1, 2, 3, 5), generator=generator) * 20  # ids 0..80 fit every dtype
    masks = resize_masks(labels, (6, 5))  # masks at half the feature size: resized inside the blend
    blended = blend_with_mask(features, masks.to(dtype), 0.25)
    full = resize_masks(masks, (12, 10))
    for view in range(2):
        for label in full[0, view].unique():
            region = full[0, view] == label
            mean = features[0, view][:, region].mean(1, keepdim=True)
            torch.testing.assert_close(blended[0, view][:, region], 0.25 * features[0, view][:, region] + 0.75 * mean)
    low = torch.randn(2, 3, 4, 4, generator=generator)
    upsampled = mask_aware_upsample(low, resize_masks(labels[0], (13, 11)).to(dtype))
    assert torch.equal(upsampled, mask_aware_upsample(low, resize_masks(labels[0], (13, 11))))


def test_negative_small_integer_ids_are_segments_like_int64():
    features = torch.randn(1, 1, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    masks = torch.tensor([[-1, -1, 5, 5], [-1, -1, 5, 5], [0, 0, -128, -128], [0, 0, -128, -128]])[None, None]
    expected = blend_with_mask(features, masks.long(), 0.0)
    torch.testing.assert_close(blend_with_mask(features, masks.to(torch.int8), 0.0), expected)
    torch.testing.assert_close(expected[0, 0, :, 0, 0], features[0, 0, :, :2, :2].mean((1, 2)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bool, torch.complex64], ids=str)
def test_float_and_bool_masks_are_refused_with_a_type_error_naming_masks(dtype):
    masks = torch.zeros(1, 1, 4, 4, dtype=dtype)
    with pytest.raises(TypeError, match="`masks` must hold integer instance ids"):
        blend_with_mask(torch.zeros(1, 1, 2, 4, 4), masks, 0.5)
    with pytest.raises(TypeError, match="`masks` must hold integer instance ids"):
        mask_aware_upsample(torch.zeros(1, 2, 2, 2), masks[0])
