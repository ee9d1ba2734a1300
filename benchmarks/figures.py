"""The figures of benchmarks/gpu_suite.sh: each benchmark's JSON, the environment, and the suite's report.

    python benchmarks/figures.py environment OUT.json       # GPU, driver, CUDA, torch, gsplat versions
    python benchmarks/figures.py gsplat OUT.json --device cuda   # load (JIT-compile) gsplat's kernels, timed
    python benchmarks/figures.py report OUT_DIR             # OUT_DIR/figures.json and figures.md

The report reads what the suite's parts left in OUT_DIR: ``parts.tsv`` (one line per part: name,
exit status, seconds), ``logs/<part>.log`` and ``<part>.json``, and the CUDA tests' JUnit XML and
max errors. Every part has an entry, with ``status`` "ok" or "failed" and, when it failed, the end
of its log as ``error``; a part that wrote no figures has ``figures`` null.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from snd_hf.files import atomic_write

# The suite's parts, in the order it runs them (gpu_suite.sh); the report has one entry for each.
PARTS = ("environment", "gsplat", "cuda_tests", "render", "train_vits14", "train_vitb14", "extract", "fields")
ERROR_LINES = 15  # lines of a failed part's log kept in the report


def write_figures(path: str | Path, figures: dict) -> None:
    """Write ``figures`` as indented JSON to ``path`` atomically (NaN and infinities become null)."""
    text = json.dumps(_finite(figures), indent=2, sort_keys=False) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), lambda temporary: Path(temporary).write_text(text))


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def environment() -> dict:
    """The machine the suite ran on: GPU, driver, CUDA, torch, gsplat and the package versions."""
    import torch

    figures = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": _cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if torch.cuda.is_available() else None,
        "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None,
        "driver": _command(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        "nvcc": _command(["nvcc", "--version"], last_line=True),
    }
    for package in ("gsplat", "transformers", "accelerate", "peft", "snd-hf"):
        figures[package] = _version(package)
    return figures


def _cpu_count() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _version(package: str) -> str | None:
    """The installed distribution's version, without importing it (None where it is not installed)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _command(argv: list[str], last_line: bool = False) -> str | None:
    """A tool's output (stripped; its last line only if asked), or None where it is missing or fails."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    text = result.stdout.strip()
    return text.splitlines()[-1] if last_line and text else text or None


def gsplat_kernels(device: str) -> dict:
    """Where gsplat comes from and, on CUDA, the time to load its kernels (a JIT compile on first use).

    gsplat's PyPI wheel (``py3-none-any``) holds CUDA sources only: the first use compiles them with
    the machine's nvcc through torch's extension builder (prebuilt wheels exist only for a few older
    torch + CUDA pairs, https://docs.gsplat.studio/whl). The build is narrowed to the device's own
    architecture (``TORCH_CUDA_ARCH_LIST``) and runs one job per core (``MAX_JOBS``) unless those
    are set; it is cached in torch's extension folder (``TORCH_EXTENSIONS_DIR``) for later runs.

    Raises:
        RuntimeError: on CUDA, when the kernels did not build (no nvcc, a compiler error).
    """
    figures = {
        "version": _version("gsplat"),
        "installed_from": os.environ.get("SND_GSPLAT_SOURCE", "already installed"),
        "install_seconds": float(os.environ.get("SND_GSPLAT_INSTALL_SECONDS", "0")),
    }
    if figures["version"] is None:
        raise RuntimeError("gsplat is not installed: carry its wheel in .whl/ (docs/performance.md) or pip install gsplat")
    if device != "cuda":
        figures["kernels"] = "not needed: on CPU the torch twin renders"
        return figures
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    os.environ.setdefault("MAX_JOBS", str(_cpu_count() or 4))
    figures.update({"torch_cuda_arch_list": os.environ["TORCH_CUDA_ARCH_LIST"], "max_jobs": os.environ["MAX_JOBS"]})
    start = time.perf_counter()
    from gsplat.cuda._backend import _C  # builds (or loads the cached build of) the extension

    figures["load_seconds"] = time.perf_counter() - start
    if _C is None:
        raise RuntimeError("gsplat's CUDA kernels did not build: see its messages above (is nvcc on the PATH?)")
    figures["kernels"] = getattr(_C, "__file__", "loaded")
    return figures


def cuda_test_figures(out_dir: Path) -> dict | None:
    """Counts and skip reasons from the CUDA tests' JUnit XML, with the max errors they recorded."""
    junit = out_dir / "cuda_tests.xml"
    if not junit.is_file():
        return None
    cases = ElementTree.parse(junit).getroot().iter("testcase")
    counts, skipped = {"passed": 0, "failed": 0, "skipped": 0}, {}
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("skipped") is not None:
            counts["skipped"] += 1
            skipped[name] = case.find("skipped").get("message", "")
        elif case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
        else:
            counts["passed"] += 1
    errors_file = out_dir / "cuda_errors.json"
    max_errors = json.loads(errors_file.read_text()) if errors_file.is_file() else {}
    return {**counts, "skip_reasons": sorted(set(skipped.values())), "max_errors": max_errors}


def read_parts(out_dir: Path) -> dict[str, dict]:
    """Every part of :data:`PARTS`: status, exit code, seconds, figures and (when it failed) the error."""
    runs = {}
    table = out_dir / "parts.tsv"
    if table.is_file():
        for line in table.read_text().splitlines():
            name, code, seconds = line.split("\t")
            runs[name] = (int(code), float(seconds))
    parts = {}
    for name in PARTS:
        code, seconds = runs.get(name, (None, None))
        if name == "cuda_tests":
            figures = cuda_test_figures(out_dir)
        else:
            path = out_dir / f"{name}.json"
            figures = json.loads(path.read_text()) if path.is_file() else None
        entry = {"status": "ok" if code == 0 else "failed" if code is not None else "not run", "exit_code": code, "seconds": seconds}
        if code not in (0, None):
            log = out_dir / "logs" / f"{name}.log"
            lines = log.read_text(errors="replace").splitlines() if log.is_file() else ["(no log)"]
            entry["error"] = "\n".join(lines[-ERROR_LINES:])
        entry["figures"] = figures
        parts[name] = entry
    return parts


def markdown(report: dict) -> str:
    """figures.md: one table of the parts, then each part's figures flattened to ``key: value`` lines."""
    lines = [f"# GPU suite figures ({report['device']}{', quick' if report['quick'] else ''})", ""]
    lines += ["| part | status | seconds |", "| --- | --- | --- |"]
    for name, part in report["parts"].items():
        seconds = "-" if part["seconds"] is None else f"{part['seconds']:.1f}"
        lines.append(f"| {name} | {part['status']} | {seconds} |")
    lines.append(f"\nTotal: {report['total_seconds']:.1f} s\n")
    for name, part in report["parts"].items():
        lines += [f"## {name}", ""]
        if "error" in part:
            lines += ["```", part["error"], "```", ""]
        lines += [f"- {key}: {value}" for key, value in _flatten(part["figures"] or {})]
        lines.append("")
    return "\n".join(lines)


def _flatten(value, prefix: str = ""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}{key}.")
        return
    name = prefix.rstrip(".")
    if isinstance(value, float):
        yield name, f"{value:.4g}"
    else:
        yield name, value


def report(out_dir: Path, device: str, quick: bool) -> dict:
    """Assemble OUT_DIR/figures.json and OUT_DIR/figures.md from the parts' outputs."""
    parts = read_parts(out_dir)
    result = {
        "device": device,
        "quick": quick,
        "total_seconds": sum(part["seconds"] or 0.0 for part in parts.values()),
        "parts": parts,
    }
    write_figures(out_dir / "figures.json", result)
    text = markdown(result)
    atomic_write(out_dir / "figures.md", lambda temporary: Path(temporary).write_text(text))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("environment", help="write the environment's figures")
    env.add_argument("json", type=Path)
    kernels = commands.add_parser("gsplat", help="load gsplat's kernels (JIT compile on CUDA) and time it")
    kernels.add_argument("json", type=Path)
    kernels.add_argument("--device", default="cuda")
    rep = commands.add_parser("report", help="assemble figures.json and figures.md")
    rep.add_argument("out_dir", type=Path)
    rep.add_argument("--device", default="cuda")
    rep.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "environment":
        write_figures(args.json, environment())
        return 0
    if args.command == "gsplat":
        figures = gsplat_kernels(args.device)
        write_figures(args.json, figures)
        print(figures)
        return 0
    result = report(args.out_dir, args.device, args.quick)
    failed = [name for name, part in result["parts"].items() if part["status"] != "ok"]
    print(f"figures: {args.out_dir / 'figures.json'}, {args.out_dir / 'figures.md'}; failed parts: {failed or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
