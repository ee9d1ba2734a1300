"""Feature rendering: one pass over all channels against the original's 3 channels per call, and scaling.

Run:  PYTHONPATH=. python benchmarks/bench_render.py                  (CPU, torch backend)
      PYTHONPATH=. python benchmarks/bench_render.py --device cuda    (gsplat backend)
      PYTHONPATH=. python benchmarks/bench_render.py --quick          (smaller sweeps)
      PYTHONPATH=. python benchmarks/bench_render.py --device cuda --paper --json render.json

1. One pass vs 3 channels at a time (C = 384, a 64x96 target rendered from 2x64x96 Gaussians, the
   original's 128 calls per view), timed in the same run: prints the ratio and the peak memory of
   the one-pass render (forward, and forward + backward w.r.t. means, covariances, opacities and features).
2. Scaling: render time and peak memory against image size, Gaussian count and channel count,
   printed as a table and drawn as a log-log plot (``--plot``, PNG, drawn with pillow).

``--paper`` replaces both with the paper's shapes: 2 context views of 576x880 (one Gaussian per
pixel, 1,013,760) into one 576x880 target, C = 384 and 768, one pass against 3 channels per pass,
forward and backward (w.r.t. means, covariances, opacities and features) in ms and peak memory;
with ``--quick`` the same comparison at toy shapes (48x64, C = 6 and 12). ``--json`` writes the
figures of either.

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
from figures import write_figures
from PIL import Image, ImageDraw
from tqdm import tqdm

from snd_hf.cameras import Cameras
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
    context = Cameras(poses[:, :2], intrinsics[:, :2], torch.full((1, 2), 0.5), torch.full((1, 2), 20.0), (height, width))
    gaussians = DepthLifter()(torch.zeros(1, 2, 3, height, width), context, depth)
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


def render_pass(gaussians: Gaussians, cameras, size, backend, grad: bool, chunk: int | None = None) -> tuple[float, float]:
    """One render of every channel, in one call (``chunk`` None) or ``chunk`` channels per call (the
    original: 3); with ``grad``, also the backward of the features' sum w.r.t. every Gaussian tensor.

    Returns:
        the seconds spent in the forward calls and in the backward calls.
    """
    chunk = chunk or gaussians.features.shape[-1]
    cuda = gaussians.means.is_cuda
    inputs = [t.detach().requires_grad_(grad) for t in (gaussians.means, gaussians.covariances, gaussians.opacities, gaussians.features)]
    forward = backward = 0.0
    with torch.set_grad_enabled(grad):
        for first in range(0, inputs[3].shape[-1], chunk):
            part = Gaussians(*inputs[:3], inputs[3][..., first : first + chunk])
            start = time.perf_counter()
            out = render_features(part, Cameras(*cameras, size), backend=backend)
            if cuda:
                torch.cuda.synchronize()
            middle = time.perf_counter()
            if grad:
                out.features.sum().backward()
                if cuda:
                    torch.cuda.synchronize()
            forward, backward = forward + middle - start, backward + time.perf_counter() - middle
            del out
    return forward, backward


def timed_render(gaussians, cameras, size, backend, repeats: int = 1, grad: bool = False, chunk: int | None = None):
    """Forward and backward seconds of the fastest of ``repeats`` :func:`render_pass` calls, and their peak memory (MiB)."""
    best, peak = (float("inf"), 0.0), 0.0
    for _ in range(repeats):
        with PeakMemory(gaussians.means.device.type) as memory:
            seconds = render_pass(gaussians, cameras, size, backend, grad, chunk)
        best = min(best, seconds, key=sum)
        peak = max(peak, memory.peak)
    return *best, peak


def three_at_a_time(gaussians, cameras, size, backend) -> float:
    """The original's scheme: 3 channels per render call (forward only)."""
    return timed_render(gaussians, cameras, size, backend, chunk=3)[0]


def paper_comparison(device: str, backend: str, quick: bool, repeats: int) -> dict:
    """One pass against 3 channels per pass at the paper's shapes (``--paper``); prints and returns the figures."""
    size, channel_counts = ((48, 64), (6, 12)) if quick else ((576, 880), (384, 768))
    rows = []
    print(f"{'C':>5} {'scheme':<16} {'fwd ms':>9} {'bwd ms':>9} {'fwd MiB':>9} {'fwd+bwd MiB':>12}")
    for channels in channel_counts:
        gaussians, cameras, target = scene(size, size, channels, device)
        for scheme, chunk in (("one pass", None), ("3 per pass", 3)):
            # The forward alone (no graph), then forward + backward with the backward timed on its own.
            forward, _, forward_mib = timed_render(gaussians, cameras, target, backend, repeats=repeats, chunk=chunk)
            _, backward, both_mib = timed_render(gaussians, cameras, target, backend, repeats=repeats, grad=True, chunk=chunk)
            row = {"channels": channels, "scheme": scheme, "forward_ms": 1000 * forward, "backward_ms": 1000 * backward,
                   "forward_peak_mib": forward_mib, "forward_backward_peak_mib": both_mib}  # fmt: skip
            rows.append(row)
            print(f"{channels:>5} {scheme:<16} {row['forward_ms']:>9.1f} {row['backward_ms']:>9.1f} {forward_mib:>9.0f} {both_mib:>12.0f}", flush=True)
        one, three = rows[-2], rows[-1]
        print(f"C={channels}: 3 per pass / one pass: forward {three['forward_ms'] / one['forward_ms']:.1f}x, "
              f"forward + backward {(three['forward_ms'] + three['backward_ms']) / (one['forward_ms'] + one['backward_ms']):.1f}x")  # fmt: skip
    return {
        "device": device,
        "backend": backend,
        "context_views": 2,
        "context_size": list(size),
        "target_size": list(size),
        "gaussians": gaussians.num_gaussians,
        "repeats": repeats,
        "peak_memory_kind": "cuda max_memory_allocated" if device == "cuda" else "process RSS above its start",
        "rows": rows,
    }


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
    parser.add_argument("--paper", action="store_true", help="only the one-pass comparison, at the paper's shapes")
    parser.add_argument("--repeats", type=int, default=2, help="--paper: best of this many renders per figure")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = "gsplat" if args.device == "cuda" else "torch"
    print(f"backend {backend}, device {args.device}, {torch.get_num_threads()} threads")
    if args.paper:
        figures = paper_comparison(args.device, backend, args.quick, args.repeats)
        if args.json is not None:
            write_figures(args.json, figures)
        return

    # 1. One pass against 3 channels per call.
    channels = 48 if args.quick else 384
    gaussians, cameras, size = scene((64, 96), (64, 96), channels, args.device)
    one_pass, _, peak = timed_render(gaussians, cameras, size, backend, repeats=2)
    *_, peak_grad = timed_render(gaussians, cameras, size, backend, grad=True)
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
        seconds, _, mib = timed_render(gaussians, cameras, size, backend, repeats=2)
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
    if args.json is not None:
        write_figures(args.json, {"device": args.device, "backend": backend, "channels": channels, "one_pass_s": one_pass,
                                  "three_per_call_s": reference, "peak_mib": peak, "peak_grad_mib": peak_grad, "scaling": rows})  # fmt: skip


if __name__ == "__main__":
    main()
