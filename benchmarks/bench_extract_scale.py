"""`snd extract` across processes: throughput of N processes against one, and peak memory per process as the
number of images grows.

    python benchmarks/bench_extract_scale.py                          # CPU: 2 x 1 thread vs 1 x 1 thread
    python benchmarks/bench_extract_scale.py --counts 200 2000 --throughput-images 200   # small: start-up costs show
    python benchmarks/bench_extract_scale.py --device cuda --processes 8 --model david-shavin/SnD

Writes a few photo-like JPEGs (benchmarks/bench_extract_memory.py) and links them under as many names as
needed, then runs ``snd extract --format shards`` on them:

- **Throughput**: ``--throughput-images`` images in one process without the launcher, then in ``--processes``
  processes under ``accelerate launch`` (``ACCELERATE_USE_CPU=true`` on CPU), each with ``--threads`` torch
  threads, so N processes use N times the threads of one. Each process times its own ``snd extract`` from after
  its imports and process-group start to its end (the last process to finish closes the run), so the figure is
  the extraction's, not Python's start-up. The CPU time each process used is printed too: on a busy machine the
  wall-clock speed-up says more about the other load than about the split, while CPU seconds that add up to
  one process's say the split itself costs nothing.
- **Memory**: each process's peak resident memory (``VmHWM``, Linux) for every count in ``--counts``, in
  ``--processes`` processes; the goal is a flat line (the largest count within 1.2x of the smallest).

The default model is the embedded tiny checkpoint, whose cost is mostly decoding and resizing: what scales
here is the whole pipeline, not a ViT's matrix products. CPU figures on a shared machine depend on its load:
the script prints the load average before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract_memory import photo_like  # noqa: E402

from snd_hf.demo import DEFAULT_CHECKPOINT  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# One process of the run: imports and the process group first, then the timed command; prints one JSON line.
PROCESS = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from snd_hf.cli import main
    from snd_hf.distributed import process_state
    import snd_hf.extract
    torch.set_num_threads(int(sys.argv[1]))
    state = process_state()
    state.wait_for_everyone()
    start, cpu = time.perf_counter(), time.process_time()
    main(sys.argv[2:])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak_kb = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
    report = {"rank": state.process_index, "seconds": seconds, "cpu_seconds": cpu, "peak_kb": peak_kb}
    print("bench " + json.dumps(report), flush=True)
    """
)


def run_extract(processes: int, threads: int, device: str, arguments: list[str]) -> list[dict]:
    """Per process: {rank, seconds, peak_kb} of one ``snd extract`` run in ``processes`` processes."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
        command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29541"]
        if device == "cpu":
            environment["ACCELERATE_USE_CPU"] = "true"
    elif device == "cpu":
        environment["CUDA_VISIBLE_DEVICES"] = ""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(PROCESS)
    try:
        done = subprocess.run([*command, script.name, str(threads), *arguments], capture_output=True, text=True, cwd=REPO, env=environment)
    finally:
        os.unlink(script.name)
    if done.returncode != 0:
        raise RuntimeError(f"snd extract failed ({done.returncode}):\n{done.stderr[-3000:]}")
    reports = [json.loads(line[len("bench ") :]) for line in done.stdout.splitlines() if line.startswith("bench ")]
    assert len(reports) == processes, done.stdout[-2000:]
    return sorted(reports, key=lambda report: report["rank"])


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--throughput-images", type=int, default=1000)
    parser.add_argument("--counts", type=int, nargs="+", default=[200, 2000], help="image counts of the memory runs")
    parser.add_argument("--size", default="480x640", help="image HxW")
    parser.add_argument("--distinct", type=int, default=8, help="distinct pictures, linked under every name")
    parser.add_argument("--shortest-edge", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--model", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    height, width = (int(side) for side in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory(prefix="bench-extract-scale-") as folder:
        folder = Path(folder)
        sources = []
        for seed in range(args.distinct):
            sources.append(folder / f"photo_{seed}.jpg")
            photo_like(height, width, seed).save(sources[-1], quality=90)
        paths = []
        for index in range(max([args.throughput_images, *args.counts])):
            paths.append(folder / f"image_{index:05d}.jpg")
            os.link(sources[index % args.distinct], paths[-1])

        def arguments(count: int, out: Path) -> list[str]:
            return ["extract", *map(str, paths[:count]), "--model", args.model, "--out", str(out), "--format", "shards",
                    "--shard-size", str(args.shard_size), "--shortest-edge", str(args.shortest_edge),
                    "--batch-size", str(args.batch_size)]  # fmt: skip

        print(f"{args.size} JPEGs, shortest edge {args.shortest_edge}, batch {args.batch_size}, model {args.model}, device {args.device}")
        if not args.skip_throughput:
            count = args.throughput_images
            print(f"throughput, {count} images ({load()}):")
            alone = run_extract(1, args.threads, args.device, arguments(count, folder / "one"))
            one = alone[0]["seconds"]
            print(
                f"  1 process  x {args.threads} thread(s): {one:7.2f} s  {count / one:7.1f} images/s, CPU"
                f" {alone[0]['cpu_seconds']:.1f} s  ({load()})",
                flush=True,
            )
            reports = run_extract(args.processes, args.threads, args.device, arguments(count, folder / "many"))
            many = max(report["seconds"] for report in reports)
            cpu = " + ".join(f"{report['cpu_seconds']:.1f}" for report in reports)
            print(
                f"  {args.processes} processes x {args.threads} thread(s): {many:7.2f} s  {count / many:7.1f} images/s, CPU"
                f" {cpu} s  speed-up {one / many:.2f}x"
                f" (goal >= {0.85 * args.processes:.1f}x)  ({load()})",
                flush=True,
            )
        if not args.skip_memory:
            print(f"peak RSS per process, {args.processes} processes:")
            smallest = None
            for count in sorted(args.counts):
                started = time.perf_counter()
                reports = run_extract(args.processes, args.threads, args.device, arguments(count, folder / f"memory_{count}"))
                peaks = [report["peak_kb"] / 1024 for report in reports]
                smallest = smallest or max(peaks)
                print(
                    f"  {count:>6} images: {', '.join(f'{peak:.0f}' for peak in peaks)} MiB  ratio {max(peaks) / smallest:.2f}"
                    f"  ({time.perf_counter() - started:.0f} s, {load()})",
                    flush=True,
                )
            print("  goal: the largest count's peak within 1.2x of the smallest's")


if __name__ == "__main__":
    main()
