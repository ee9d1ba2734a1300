"""Cost of loading safely: `SnDModel.from_original_checkpoint` with its checks vs a bare load.

Run: ``python benchmarks/bench_loading.py [--size base --repeats 3]``

For a random original-layout checkpoint of the published architecture (ViT-S/14 or ViT-B/14), prints
the median wall and CPU seconds of
- the reference, timed in the same run: ``torch.load(weights_only=True)`` + key renaming +
  ``load_state_dict`` into a meta-built model (what loading cost before the checks);
- ``SnDModel.from_original_checkpoint`` (archive CRC-32 check, finite check, layout recognition,
  strict keys), first load of the file in a fresh process (the CRC is checked once per file version
  per process, so each timing runs in its own subprocess);
and their ratio. The checks read every byte twice more (CRC, min/max), so the ratio is bounded by
how fast this machine streams memory; on a shared machine prefer the CPU ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from snd_hf import SnDConfig
from snd_hf.loading import original_shapes

REFERENCE = """
import sys, time, torch
from snd_hf import SnDConfig, SnDModel
from snd_hf.loading import convert_original_state_dict
wall, cpu = time.perf_counter(), time.process_time()
state_dict = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
config = SnDConfig.from_variant(sys.argv[2])
with torch.device("meta"):
    model = SnDModel(config)
model.load_state_dict(convert_original_state_dict(state_dict, config), strict=True, assign=True)
print(time.perf_counter() - wall, time.process_time() - cpu)
"""

CHECKED = """
import sys, time
from snd_hf import SnDModel
wall, cpu = time.perf_counter(), time.process_time()
SnDModel.from_original_checkpoint(sys.argv[1], size=sys.argv[2])
print(time.perf_counter() - wall, time.process_time() - cpu)
"""


def _time(script: str, path: Path, size: str) -> tuple[float, float]:
    result = subprocess.run([sys.executable, "-c", script, str(path), size], capture_output=True, text=True, check=True)
    wall, cpu = map(float, result.stdout.split()[-2:])
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "base"], default="base")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    shapes = original_shapes(SnDConfig.from_variant(args.size))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"dinov2_{args.size}.pth"
        torch.save({key: torch.randn(shape, generator=generator) * 0.02 for key, shape in shapes.items()}, path)
        timings = {"reference": [], "checked": []}
        for _ in range(args.repeats):  # interleaved, so that load on a shared machine hits both alike
            timings["reference"].append(_time(REFERENCE, path, args.size))
            timings["checked"].append(_time(CHECKED, path, args.size))
        size_mb = path.stat().st_size / 2**20
    median = {name: tuple(statistics.median(run[i] for run in runs) for i in range(2)) for name, runs in timings.items()}
    report = {
        "checkpoint_mb": round(size_mb, 1),
        "reference_wall_s": round(median["reference"][0], 3),
        "reference_cpu_s": round(median["reference"][1], 3),
        "checked_wall_s": round(median["checked"][0], 3),
        "checked_cpu_s": round(median["checked"][1], 3),
        "wall_ratio": round(median["checked"][0] / median["reference"][0], 2),
        "cpu_ratio": round(median["checked"][1] / median["reference"][1], 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
