"""Peak memory of `snd extract` against the number of images: streaming keeps it flat.

    python benchmarks/bench_extract_memory.py                       # 5, 10 and 50 JPEGs of 4000x3000
    python benchmarks/bench_extract_memory.py --counts 5 50 --size 3000x4000 --batch-size 8

Writes one photo-like JPEG (smooth gradients, shapes and noise) and links it under ``max(--counts)``
names, then runs ``snd extract`` on the first N of them for each N, each in a fresh Python process that
reports its own peak resident memory (``VmHWM``), with the embedded default checkpoint (a tiny ViT:
the memory measured is the images', not the model's). For reference, the same process shape holding
every decoded image at once (what `snd extract` did before it streamed) is measured for the counts up
to ``--reference-max``. Linux only (``/proc/self/status``). Prints peak RSS per count and the ratio to the smallest count; the goal is
<= 1.3 for 50 vs 5 images.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from snd_hf.demo import DEFAULT_CHECKPOINT

# Peak RSS from /proc/self/status VmHWM: the high-water mark of this process's own memory map (getrusage's
# ru_maxrss would also count the parent's pages at the fork before exec).
PEAK = 'print("peak_kb", next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))'
EXTRACT = textwrap.dedent(
    """
    import sys
    from snd_hf.cli import main
    main(sys.argv[1:])
    """
) + PEAK
# The pre-streaming behaviour: every image decoded to RGB and kept before the first is processed.
HOLD_ALL = textwrap.dedent(
    """
    import sys
    from PIL import Image
    import snd_hf  # the same imports as snd extract
    images = [Image.open(path).convert("RGB") for path in sys.argv[1:]]
    """
) + PEAK


def photo_like(height: int, width: int, seed: int = 0) -> Image.Image:
    """A JPEG-friendly test picture: gradients, a few filled shapes and mild noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([rows / height, cols / width, 0.5 + 0.5 * np.sin(rows / 97 + cols / 131)], axis=-1) * 200
    noise = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    picture = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(40):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(height // 20, height // 5))
        draw.ellipse((x, y, x + size, y + size), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return picture


def measure(script: str, arguments: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of a fresh Python process running ``script``."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script, *arguments], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"child failed ({result.returncode}):\n{result.stderr[-3000:]}")
    peak_kb = int(next(line for line in result.stdout.splitlines() if line.startswith("peak_kb")).split()[1])
    return peak_kb / 1024, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[5, 10, 50])
    parser.add_argument("--size", default="3000x4000", help="image HxW (default 3000x4000, a 12 MP photo)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shortest-edge", type=int, default=448)
    parser.add_argument("--reference-max", type=int, default=10, help="largest count for the hold-all reference")
    args = parser.parse_args()
    height, width = (int(side) for side in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory(prefix="bench-extract-memory-") as folder:
        folder = Path(folder)
        source = folder / "photo.jpg"
        photo_like(height, width).save(source, quality=90)
        paths = []
        for index in range(max(args.counts)):
            path = folder / f"image_{index:03d}.jpg"
            os.link(source, path)  # the decoder reads the same bytes N times; the disk holds one copy
            paths.append(str(path))
        print(
            f"{width}x{height} JPEG of {source.stat().st_size / 2**20:.1f} MiB, batch {args.batch_size}, shortest edge"
            f" {args.shortest_edge}, model {DEFAULT_CHECKPOINT.name} (embedded); load average"
            f" {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
            flush=True,
        )
        print(f"{'images':>6} {'peak RSS MiB':>13} {'ratio':>6} {'wall s':>7} {'hold-all MiB':>13}", flush=True)
        smallest = None
        for count in sorted(args.counts):
            out = folder / f"out_{count}"
            options = ["--model", str(DEFAULT_CHECKPOINT), "--out", str(out), "--batch-size", str(args.batch_size)]
            options += ["--shortest-edge", str(args.shortest_edge)]
            peak, elapsed = measure(EXTRACT, ["extract", *paths[:count], *options])
            smallest = smallest or peak
            reference = f"{measure(HOLD_ALL, paths[:count])[0]:>13.0f}" if count <= args.reference_max else f"{'-':>13}"
            print(f"{count:>6} {peak:>13.0f} {peak / smallest:>6.2f} {elapsed:>7.1f} {reference}", flush=True)
        print("goal: peak RSS for the largest count <= 1.3 x the smallest count's")


if __name__ == "__main__":
    main()
