"""Forward time and peak memory of the MVSplat lifter on CPU (random weights, B=1, V=2).

Run from the repository root::

    python benchmarks/bench_mvsplat.py                  # 64x96 and 576x880
    python benchmarks/bench_mvsplat.py --sizes 256x384 --threads 4

Weights are random (timing does not depend on them); the scene is two views 10 cm apart.
Peak memory is the process's max RSS (Linux), so run one size per process for a clean figure.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from snd_hf.cameras import Cameras
from snd_hf.splatting import MVSplatLifter


def make_context(height: int, width: int) -> tuple[torch.Tensor, Cameras]:
    """Two random images [1, 2, 3, H, W] and their cameras [1, 2]."""
    extrinsics = torch.eye(4).repeat(1, 2, 1, 1)
    extrinsics[0, 1, 0, 3] = 0.1
    intrinsics = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.5, 0.5], [0.0, 0.0, 1.0]]).repeat(1, 2, 1, 1)
    cameras = Cameras(extrinsics, intrinsics, torch.full((1, 2), 0.5), torch.full((1, 2), 20.0), (height, width))
    return torch.rand(1, 2, 3, height, width), cameras


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["64x96", "576x880"], help="HxW, multiples of 16")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lifter = MVSplatLifter()
    print(f"threads={args.threads}")
    for size in args.sizes:
        height, width = (int(part) for part in size.split("x"))
        images, cameras = make_context(height, width)
        with torch.no_grad():
            for _ in range(args.repeats):
                start = time.perf_counter()
                gaussians = lifter(images, cameras)
                seconds = time.perf_counter() - start
                peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
                print(
                    f"{height}x{width}: forward {seconds:.2f} s, G={gaussians.num_gaussians}, "
                    f"peak RSS {peak_gib:.2f} GiB"
                )


if __name__ == "__main__":
    main()
