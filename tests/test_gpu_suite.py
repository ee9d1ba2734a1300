"""benchmarks/gpu_suite.sh: its CPU dry run writes every part's figures, and its report keeps failures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import figures  # noqa: E402  (benchmarks/ is not a package)

SUITE = REPO_ROOT / "benchmarks" / "gpu_suite.sh"
# What each part's figures must hold for docs/performance.md's GPU section.
PART_KEYS = {
    "environment": {"torch", "torch_cuda", "cuda_available", "gpu", "driver", "gsplat"},
    "gsplat": {"version", "installed_from", "install_seconds", "kernels"},
    "cuda_tests": {"passed", "failed", "skipped", "skip_reasons", "max_errors"},
    "render": {"rows", "gaussians", "context_size", "peak_memory_kind"},
    "train_vits14": {"step_ms", "stages_ms", "peak_memory_mib", "projected_hours", "hidden_size", "lifter"},
    "train_vitb14": {"step_ms", "stages_ms", "peak_memory_mib", "projected_hours", "hidden_size", "lifter"},
    "extract": {"rows", "worst_ratio", "max_abs_difference_518px"},
    "fields": {"miou", "highlight_iou", "fit_seconds"},
}


@pytest.mark.slow
def test_cpu_dry_run_writes_every_part(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(SUITE), str(out), "--device", "cpu", "--quick"], capture_output=True, text=True, timeout=3000
    )
    report = json.loads((out / "figures.json").read_text())
    failed = {name: part.get("error") for name, part in report["parts"].items() if part["status"] != "ok"}
    assert result.returncode == 0 and not failed, f"{result.stdout}\n{failed}"
    assert set(report["parts"]) == set(figures.PARTS) == set(PART_KEYS)
    for name, keys in PART_KEYS.items():
        assert keys <= set(report["parts"][name]["figures"]), name
    parts = report["parts"]
    # On CPU the CUDA tests skip, each with its reason, and record no errors.
    tests = parts["cuda_tests"]["figures"]
    assert tests["passed"] == tests["failed"] == 0 and tests["skipped"] >= 15
    assert tests["skip_reasons"] and tests["max_errors"] == {}
    assert [(row["channels"], row["scheme"]) for row in parts["render"]["figures"]["rows"]] == [
        (6, "one pass"), (6, "3 per pass"), (12, "one pass"), (12, "3 per pass")
    ]  # fmt: skip
    for size, width in (("vits14", 384), ("vitb14", 768)):
        train = parts[f"train_{size}"]["figures"]
        assert (train["hidden_size"], train["lifter"], train["image_size"]) == (width, "MVSplatLifter", [64, 96])
        assert train["projected_steps"] == 300000 and train["projected_hours"] > 0
    assert {(row["variant"], row["dtype"]) for row in parts["extract"]["figures"]["rows"]} == {("small", "bfloat16"), ("base", "bfloat16")}
    assert parts["environment"]["figures"]["cuda_available"] is False
    markdown = (out / "figures.md").read_text()
    assert all(f"## {name}" in markdown for name in figures.PARTS)


def test_report_keeps_failed_and_missing_parts(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "parts.tsv").write_text("environment\t0\t1.5\nrender\t1\t2.0\ntrain_vits14\t124\t600.0\n")
    (tmp_path / "environment.json").write_text(json.dumps({"torch": "2.13.0"}))
    (tmp_path / "logs" / "render.log").write_text("".join(f"line {i}\n" for i in range(40)) + "RuntimeError: boom\n")
    report = figures.report(tmp_path, "cuda", quick=False)
    parts = report["parts"]
    assert parts["environment"] == {"status": "ok", "exit_code": 0, "seconds": 1.5, "figures": {"torch": "2.13.0"}}
    assert parts["render"]["status"] == "failed" and parts["render"]["figures"] is None
    assert parts["render"]["error"].splitlines() == [f"line {i}" for i in range(26, 40)] + ["RuntimeError: boom"]
    assert parts["train_vits14"]["exit_code"] == 124 and parts["train_vits14"]["error"] == "(no log)"
    assert parts["fields"] == {"status": "not run", "exit_code": None, "seconds": None, "figures": None}
    assert report["total_seconds"] == pytest.approx(603.5)
    assert json.loads((tmp_path / "figures.json").read_text()) == report
    markdown = (tmp_path / "figures.md").read_text()
    assert "| render | failed | 2.0 |" in markdown and "- torch: 2.13.0" in markdown and "RuntimeError: boom" in markdown


def test_cuda_test_figures_count_junit_cases_and_read_max_errors(tmp_path):
    (tmp_path / "cuda_tests.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="a" name="ok"/>'
        '<testcase classname="a" name="bad"><failure message="x"/></testcase>'
        '<testcase classname="a" name="skip"><skipped message="no CUDA"/></testcase>'
        "</testsuite></testsuites>"
    )
    (tmp_path / "cuda_errors.json").write_text(json.dumps({"a::ok": {"features": {"max_abs": 1e-6, "relative": 1e-7}}}))
    assert figures.cuda_test_figures(tmp_path) == {
        "passed": 1, "failed": 1, "skipped": 1, "skip_reasons": ["no CUDA"],
        "max_errors": {"a::ok": {"features": {"max_abs": 1e-6, "relative": 1e-7}}},
    }  # fmt: skip


def test_write_figures_turns_non_finite_numbers_into_null(tmp_path):
    figures.write_figures(tmp_path / "f.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}})
    assert json.loads((tmp_path / "f.json").read_text()) == {"a": None, "b": [1.0, None], "c": {"d": 2}}


@pytest.mark.parametrize(
    "arguments, message",
    [([], "usage: bash benchmarks/gpu_suite.sh OUT_DIR"), (["out", "--fast"], "unknown argument '--fast'"),
     (["out", "--device", "tpu"], "--device must be cuda or cpu, got 'tpu'"),
     (["out", "--budget", "8m"], "--budget must be whole seconds, got '8m'")],
)  # fmt: skip
def test_suite_rejects_bad_arguments_in_one_line(tmp_path, arguments, message):
    arguments = [str(tmp_path / a) if a == "out" else a for a in arguments]
    result = subprocess.run(["bash", str(SUITE), *arguments], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_spent_budget_still_writes_the_report(tmp_path):
    result = subprocess.run(
        ["bash", str(SUITE), str(tmp_path / "out"), "--device", "cpu", "--budget", "1"], capture_output=True, text=True, timeout=300
    )
    report = json.loads((tmp_path / "out" / "figures.json").read_text())
    assert result.returncode == 1
    for name in figures.PARTS:
        assert report["parts"][name]["exit_code"] == 124
        assert report["parts"][name]["error"] == "not run: the suite's --budget of 1 s was spent"
