"""Feature rendering: one pass over all channels against the original's 3 channels per call, and scaling.

Run:  PYTHONPATH=. python benchmarks/bench_render.py                  (CPU, torch backend)
      PYTHONPATH=. python benchmarks/bench_render.py --device cuda    (gsplat backend)
      PYTHONPATH=. python benchmarks/bench_render.py --quick          (smaller sweeps)

1. One pass vs 3 channels at a time (C = 384, a 64x96 target rendered from 2x64x96 Gaussians, the
   original's 128 calls per view), timed in the same run: prints the ratio and the peak memory of
   the one-pass render (forward, and forward + backward w.r.t. the features).
2. Scaling: render time and peak memory against image size, Gaussian count and channel count,
   printed as a table and drawn as a log-log plot (``--plot``, PNG, drawn with pillow).

Peak memory: CPU, the process's resident set sampled every 2 ms above its level before the call;
CUDA, ``torch.cuda.max_memory_allocated`` above the allocation before the call.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import threading
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from snd_hf.splatting.gaussians import Gaussians
from snd_hf.splatting.lifters import DepthLifter
from snd_hf.splatting.render import render_features


def scene(context_size: tuple[int, int], target_size: tuple[int, int], channels: int, device: str):
    """Two context views of a tilted plane lifted with DepthLifter, and a third camera between them."""
    height, width = context_size
    rows, columns = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    depth = (3.0 + 0.5 * columns + 0.3 * rows).expand(1, 2, height, width)
    poses = torch.eye(4).repeat(1, 3, 1, 1)
    poses[0, :, 0, 3] = torch.tensor([-0.1, 0.1, 0.0])  # left and right context views, target in the middle
    intrinsics = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.5, 0.5], [0.0, 0.0, 1.0]]).expand(1, 3, 3, 3)
    context = {
        "image": torch.zeros(1, 2, 3, height, width),
        "extrinsics": poses[:, :2],
        "intrinsics": intrinsics[:, :2],
        "depth": depth,
    }
    gaussians = DepthLifter()(context)
    features = torch.randn(1, gaussians.num_gaussians, channels)
    gaussians = Gaussians(*(t.to(device) for t in (gaussians.means, gaussians.covariances, gaussians.opacities, features)))
    cameras = (poses[:, 2:], intrinsics[:, 2:], torch.full((1, 1), 0.5), torch.full((1, 1), 20.0))
    return gaussians, tuple(c.to(device) for c in cameras), target_size


class PeakMemory:
    """Peak memory of a block above its starting level, in MiB (RSS sampling on CPU, allocator on CUDA).

    On CPU, glibc is told to map every allocation above 64 KiB afresh and to return freed memory,
    so that the resident set follows the live tensors.
    """

    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD: a fixed 64 KiB

    def __init__(self, device: str):
        self.device, self.peak = device, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        self._libc.malloc_trim(0)
        self._start = self._rss()
        self._highest, self._running = self._start, True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = (torch.cuda.max_memory_allocated() - self._start) / 2**20
            return
        self._running = False
        self._thread.join()
        self.peak = (self._highest - self._start) / 2**20

    def _sample(self) -> None:
        while self._running:
            self._highest = max(self._highest, self._rss())
            time.sleep(0.002)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096


def timed_render(gaussians, cameras, size, backend, repeats: int = 1, grad: bool = False):
    """Best time (s) and peak memory (MiB) of render_features."""
    best, peak = float("inf"), 0.0
    for _ in range(repeats):
        with PeakMemory(gaussians.means.device.type) as memory:
            start = time.perf_counter()
            if grad:
                features = gaussians.features.detach().requires_grad_()
                out = render_features(gaussians.with_features(features), *cameras, size, backend=backend)
                out.features.sum().backward()
            else:
                with torch.no_grad():
                    out = render_features(gaussians, *cameras, size, backend=backend)
            if gaussians.means.is_cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        peak = max(peak, memory.peak)
        del out
    return best, peak


def three_at_a_time(gaussians, cameras, size, backend) -> float:
    """The original's scheme: 3 channels per render call."""
    start = time.perf_counter()
    channels = gaussians.features.shape[-1]
    with torch.no_grad():
        parts = [
            render_features(gaussians.with_features(gaussians.features[..., i : i + 3]), *cameras, size, backend=backend).features
            for i in tqdm(range(0, channels, 3), desc="3 channels per call", leave=False)
        ]
        torch.cat(parts, dim=2)
    if gaussians.means.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def plot(rows: list[dict], path: Path) -> None:
    """Log-log plot of time and peak memory per sweep, drawn with pillow."""
    sweeps = ["pixels", "gaussians", "channels"]
    panel_width, panel_height, margin = 360, 300, 60
    image = Image.new("RGB", (panel_width * len(sweeps), panel_height * 2), "white")
    draw = ImageDraw.Draw(image)
    for column, sweep in enumerate(sweeps):
        points = [row for row in rows if row["sweep"] == sweep]
        for line, (key, label, colour) in enumerate([("seconds", "time (s)", "#1f77b4"), ("mib", "peak memory (MiB)", "#d62728")]):
            left, top = column * panel_width + margin, line * panel_height + 20
            right, bottom = (column + 1) * panel_width - 15, (line + 1) * panel_height - margin + 10
            xs = [math.log10(p[sweep]) for p in points]
            ys = [math.log10(max(p[key], 1e-3)) for p in points]
            x_low, x_high = min(xs), max(xs) + 1e-9
            y_low, y_high = math.floor(min(ys)), math.ceil(max(ys) + 1e-9)
            y_high += y_high == y_low

            def to_pixel(x: float, y: float) -> tuple[float, float]:
                return (
                    left + (x - x_low) / (x_high - x_low) * (right - left),
                    bottom - (y - y_low) / (y_high - y_low) * (bottom - top),
                )

            draw.rectangle([left, top, right, bottom], outline="black")
            for decade in range(y_low, y_high + 1):
                y = to_pixel(x_low, decade)[1]
                draw.line([left - 4, y, left, y], fill="black")
                draw.text((left - 52, y - 6), f"1e{decade}", fill="black")
            for x, point in zip(xs, points):
                px = to_pixel(x, y_low)[0]
                draw.line([px, bottom, px, bottom + 4], fill="black")
                draw.text((px - 14, bottom + 6), f"{point[sweep]:.3g}", fill="black")
            pixels = [to_pixel(x, y) for x, y in zip(xs, ys)]
            draw.line(pixels, fill=colour, width=2)
            for px, py in pixels:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
            draw.text((left + 5, top + 4), f"{label} vs {sweep}", fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    image.save(temporary, format="PNG")
    temporary.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="smaller sweeps and no 3-at-a-time run at C=384")
    parser.add_argument("--plot", type=Path, default=Path("outputs/bench_render.png"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = "gsplat" if args.device == "cuda" else "torch"
    print(f"backend {backend}, device {args.device}, {torch.get_num_threads()} threads")

    # 1. One pass against 3 channels per call.
    channels = 48 if args.quick else 384
    gaussians, cameras, size = scene((64, 96), (64, 96), channels, args.device)
    one_pass, peak = timed_render(gaussians, cameras, size, backend, repeats=2)
    _, peak_grad = timed_render(gaussians, cameras, size, backend, grad=True)
    reference = three_at_a_time(gaussians, cameras, size, backend)
    print(
        f"C={channels}, {gaussians.num_gaussians} Gaussians -> 64x96: one pass {one_pass:.3f} s, "
        f"3 per call {reference:.3f} s, ratio {reference / one_pass:.1f}x; peak memory {peak:.0f} MiB "
        f"(forward), {peak_grad:.0f} MiB (forward + backward)"
    )

    # 2. Scaling.
    sizes = [(32, 48), (64, 96), (128, 192)] + ([] if args.quick else [(256, 384)])
    context_sizes = [(32, 48), (64, 96), (128, 192)] + ([] if args.quick else [(256, 384)])
    channel_counts = [3, 16, 64] + ([] if args.quick else [384])
    cases = (
        [("pixels", s, s, 64) for s in sizes]
        + [("gaussians", c, (64, 96), 64) for c in context_sizes]
        + [("channels", (64, 96), (64, 96), c) for c in channel_counts]
    )
    rows = []
    for sweep, context_size, target_size, count in tqdm(cases, desc="scaling"):
        gaussians, cameras, size = scene(context_size, target_size, count, args.device)
        seconds, mib = timed_render(gaussians, cameras, size, backend, repeats=2)
        rows.append(
            {"sweep": sweep, "pixels": size[0] * size[1], "gaussians": gaussians.num_gaussians, "channels": count,
             "seconds": seconds, "mib": mib}
        )
    print(f"{'sweep':>9} {'pixels':>8} {'gaussians':>9} {'channels':>8} {'time (s)':>9} {'peak MiB':>9}")
    for row in rows:
        print(
            f"{row['sweep']:>9} {row['pixels']:>8} {row['gaussians']:>9} {row['channels']:>8} "
            f"{row['seconds']:>9.3f} {row['mib']:>9.1f}"
        )
    plot(rows, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
