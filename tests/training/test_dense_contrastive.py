"""The 2D pre-training objective: crop geometry, positives and the InfoNCE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from snd_hf.training.dense_contrastive import (
    dense_info_nce,
    positive_tokens,
    random_crops,
    token_centres,
)

SIZE, GRID = (84, 112), (6, 8)


def _coordinate_images(count: int, height: int = 126, width: int = 168) -> torch.Tensor:
    """Images whose channels are the source pixel's (x, y) centre, divided by 1000, and a constant. [N, 3, H, W]"""
    rows, columns = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    image = torch.stack([columns, rows, torch.full_like(rows, 500.0)]) / 1000.0
    return image.expand(count, 3, height, width).clone()


def test_token_centres_are_where_the_crop_samples_the_source():
    generator = torch.Generator().manual_seed(0)
    crops = random_crops(_coordinate_images(16), SIZE, generator, jitter=0.0)
    # The mean source coordinate over each token's 14x14 pixels is the token centre (bilinear sampling is linear).
    sampled = F.avg_pool2d(crops.images[:, :2] * 1000.0, 14).flatten(2).transpose(1, 2)  # [N, h·w, 2]
    torch.testing.assert_close(sampled, token_centres(crops, GRID), atol=0.05, rtol=0)
    assert crops.flipped.any() and not crops.flipped.all()


def test_positives_land_within_their_patch_and_overlap_is_guaranteed():
    generator = torch.Generator().manual_seed(1)
    images = _coordinate_images(32)
    crops_a = random_crops(images, SIZE, generator)
    crops_b = random_crops(images, SIZE, generator, inside=crops_a.boxes)
    positives = positive_tokens(crops_a, crops_b, GRID)
    assert ((positives >= 0).sum(1) > 0).all()  # B's centre lies inside A: every pair overlaps
    centres_a, centres_b = token_centres(crops_a, GRID), token_centres(crops_b, GRID)
    valid = positives >= 0
    matched = torch.gather(centres_b, 1, positives.clamp_min(0)[..., None].expand(-1, -1, 2))
    # The positive's patch holds A's token centre: within half a patch of B (in source pixels).
    half_patch = torch.stack([crops_b.boxes[:, 2] / GRID[1], crops_b.boxes[:, 3] / GRID[0]], dim=-1)[:, None] / 2
    assert ((matched - centres_a).abs() <= half_patch + 1e-4)[valid].all()


def test_info_nce_is_log_n_for_equal_embeddings_and_small_for_matched_ones():
    embeddings = F.normalize(torch.ones(2, 4, 3), dim=-1)
    positives = torch.tensor([[0, 1, 2, 3], [3, 2, 1, -1]])
    # All keys alike: the positive is one of 8 equal logits.
    assert dense_info_nce(embeddings, embeddings, positives).item() == pytest.approx(math.log(8))
    keys = torch.eye(8).view(2, 4, 8)
    queries = torch.eye(8)[[0, 1, 2, 3, 7, 6, 5, 4]].view(2, 4, 8)  # each query equals its positive key
    assert dense_info_nce(queries, keys, positives, temperature=0.05).item() < 1e-6
    assert dense_info_nce(queries, keys, torch.full((2, 4), -1)).item() == 0.0
