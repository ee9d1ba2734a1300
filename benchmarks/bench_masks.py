"""Vectorised mask operations against loop implementations of the original, timed in the same run.

Run:  python benchmarks/bench_masks.py            (1x384x576x880 features, 40 segments)
      python benchmarks/bench_masks.py --small    (a quick smoke run)

Large tensors are backed by transparent huge pages (THP_MEM_ALLOC_ENABLE=1, set below; pass
THP_MEM_ALLOC_ENABLE=0 to measure with 4 KB pages). Prints each reference/vectorised time ratio (the goal is >= 10x for both operations) and, for
scale, the time of one copy of the features (blending must read them twice and write once). The loop
references below follow the original SnD code (src/model/vit/utils.py): blending loops over
views and segments; upsampling handles the four bilinear neighbours one at a time, each
gathered at full resolution.
"""

from __future__ import annotations

import argparse
import os
import time

# Back large tensors with transparent huge pages (read by torch's CPU allocator), for both sides:
# otherwise the page faults of each fresh 778 MB buffer (~0.3 s here) dominate every timing.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch
import torch.nn.functional as F

from snd_hf.splatting.masks import blend_with_mask, mask_aware_upsample


def blend_reference(features: torch.Tensor, masks: torch.Tensor, alpha: float) -> torch.Tensor:
    """The original's blending: a Python loop over batch, views and segments."""
    out = torch.empty_like(features)
    for b in range(features.shape[0]):
        for v in range(features.shape[1]):
            feature, mask = features[b, v], masks[b, v]
            for label in torch.unique(mask):
                region = mask == label
                mean = feature[:, region].mean(dim=1, keepdim=True)
                out[b, v][:, region] = alpha * feature[:, region] + (1 - alpha) * mean
    return out


def upsample_reference(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The original's mask-aware upsampling of one image: four full-resolution neighbour gathers."""
    _, low_height, low_width = features.shape
    height, width = mask.shape
    ys = torch.linspace(0, low_height - 1, height)
    xs = torch.linspace(0, low_width - 1, width)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    x0, y0 = grid_x.floor().long(), grid_y.floor().long()
    x1, y1 = (x0 + 1).clamp(max=low_width - 1), (y0 + 1).clamp(max=low_height - 1)
    wx, wy = grid_x - x0, grid_y - y0
    rows = torch.linspace(0, height - 1, low_height).round().long()
    columns = torch.linspace(0, width - 1, low_width).round().long()
    low_mask = mask[rows][:, columns]
    total = torch.zeros(height, width)
    out = torch.zeros(features.shape[0], height, width)
    for row, column, weight in ((y0, x0, (1 - wx) * (1 - wy)), (y0, x1, wx * (1 - wy)), (y1, x0, (1 - wx) * wy), (y1, x1, wx * wy)):
        weight = weight * (low_mask[row, column] == mask)
        total += weight
        out += features[:, row, column] * weight
    return out / torch.where(total == 0, torch.ones_like(total), total)


def blocky_segments(count: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Instance-like masks: ``count`` segments from nearest-upsampled random blocks."""
    coarse = torch.randint(0, count, (1, 1, 8, 12), generator=generator)
    coarse.view(-1)[:count] = torch.arange(count)  # every label present
    return F.interpolate(coarse.float(), size=(height, width), mode="nearest").long()[0, 0]


def timed(function, *args, repeats: int) -> tuple[float, torch.Tensor]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="64-channel 144x220 images instead of 384x576x880")
    parser.add_argument("--segments", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    channels, height, width = (64, 144, 220) if args.small else (384, 576, 880)
    generator = torch.Generator().manual_seed(0)
    mask = blocky_segments(args.segments, height, width, generator)
    print(f"features 1x{channels}x{height}x{width}, {args.segments} segments, {torch.get_num_threads()} threads")

    features = torch.randn(1, 1, channels, height, width, generator=generator)
    # The memory-bandwidth floor: one read and one write of the features.
    copy_time, _ = timed(torch.clone, features, repeats=args.repeats)
    print(f"floor: one copy of the features {copy_time:.3f} s")
    reference_time, expected = timed(blend_reference, features, mask[None, None], 0.5, repeats=args.repeats)
    vectorised_time, actual = timed(blend_with_mask, features, mask[None, None], 0.5, repeats=args.repeats)
    error = (actual - expected).abs().max().item()
    print(f"blend_with_mask      loop {reference_time:8.3f} s  vectorised {vectorised_time:7.3f} s  "
          f"ratio {reference_time / vectorised_time:6.1f}x  max|diff| {error:.1e}")
    # The teacher blends its rendered buffer in place: no second full-resolution allocation.
    in_place_time, _ = timed(lambda: blend_with_mask(actual, mask[None, None], 0.5, out=actual), repeats=args.repeats)
    print(f"  ... in place (out=features)        {in_place_time:7.3f} s  ratio {reference_time / in_place_time:6.1f}x")
    del features, expected, actual

    low = torch.randn(channels, height // 14, width // 14, generator=generator)
    reference_time, expected = timed(upsample_reference, low, mask, repeats=args.repeats)
    vectorised_time, actual = timed(mask_aware_upsample, low, mask, repeats=args.repeats)
    valid = expected.abs().sum(0) > 0  # the reference outputs 0 where no neighbour is valid
    error = (actual - expected)[:, valid].abs().max().item()
    print(f"mask_aware_upsample  loop {reference_time:8.3f} s  vectorised {vectorised_time:7.3f} s  "
          f"ratio {reference_time / vectorised_time:6.1f}x  max|diff| {error:.1e}")


if __name__ == "__main__":
    main()
