"""Shared test fixtures: paths to the reference fixtures and small helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from snd_hf.files import atomic_write

REPO_ROOT = Path(__file__).resolve().parents[1]
# The reference fixtures (outputs of the original DINOv2, MVSplat and SnD code on random weights,
# see their README.md) live outside the repository, in ../shared/fixtures beside the checkout;
# SND_FIXTURES points elsewhere. Without them the parity tests skip, saying so.
FIXTURES = Path(os.environ.get("SND_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))


def require_fixtures(folder: Path = FIXTURES) -> Path:
    """``folder`` if it exists; otherwise skips the calling test, naming where the fixtures belong."""
    if not folder.is_dir():
        pytest.skip(
            f"reference fixtures not found at {folder}: put them in ../shared/fixtures beside the checkout"
            " or set SND_FIXTURES=/path/to/fixtures (README.md, 'Tests')"
        )
    return folder


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # That module is all slow tier, and merely importing it fetches transformers' sdist: the default
    # tier (addopts -m "not slow") does not even collect it.
    if collection_path.name == "test_transformers_common.py" and config.getoption("markexpr") == "not slow":
        return True
    return None


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return require_fixtures()


# The CUDA tests' comparisons write their max errors (JSON, by test id) to the file this names;
# benchmarks/gpu_suite.sh reports them as figures.
MAX_ERRORS_ENV = "SND_MAX_ERRORS"


@pytest.fixture(scope="session")
def _max_errors():
    errors: dict[str, dict[str, dict[str, float]]] = {}
    yield errors
    path = os.environ.get(MAX_ERRORS_ENV)
    if path and errors:
        text = json.dumps(errors, indent=2, sort_keys=True) + "\n"
        atomic_write(Path(path), lambda temporary: Path(temporary).write_text(text))


@pytest.fixture
def record_max_error(request, _max_errors):
    """``record(name, actual, expected)``: the max absolute error of ``actual`` against ``expected`` and
    that error relative to ``expected``'s largest magnitude, kept under the test's id (written to
    ``$SND_MAX_ERRORS`` at the end of the session) and returned as ``(max_abs, relative)``."""

    def record(name: str, actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
        actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
        max_abs = (actual - expected).abs().max().item() if expected.numel() else 0.0
        scale = expected.abs().max().item() if expected.numel() else 0.0
        relative = max_abs / scale if scale > 0 else max_abs
        _max_errors.setdefault(request.node.nodeid, {})[name] = {"max_abs": max_abs, "relative": relative}
        return max_abs, relative

    return record


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def hub(tmp_path_factory, monkeypatch):
    """A running Hugging Face Hub emulator (tests/hub_emulator.py) that huggingface_hub and transformers use.

    Points every Hub client at it for the duration of the test: ``HF_ENDPOINT`` and the values
    huggingface_hub read from it at import (``constants.ENDPOINT``, the resolve URL template, the
    module-level ``HfApi``, transformers' cached ``HfApi``), a fresh ``HF_HOME``/``HF_HUB_CACHE`` in a
    temp dir, Xet and telemetry off, online mode, and ``HF_TOKEN`` set to the emulator's token (writes
    such as ``push_to_hub`` need it). Yields the ``HubEmulator``; seed it with
    ``hub.add_file(repo_id, path, data)``, read it back with ``hub.files(repo_id)``, and switch the
    clients to offline mode with ``hub.set_offline(True)`` (sets ``HF_HUB_OFFLINE`` and the constant).
    """
    import huggingface_hub
    from hub_emulator import HubEmulator  # tests/ is on sys.path (rootdir conftest)
    from huggingface_hub import constants

    root = tmp_path_factory.mktemp("hub")
    emulator = HubEmulator(root / "server").start()
    home = root / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    env = {
        "HF_ENDPOINT": emulator.url,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_TOKEN": emulator.token,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    patched = {
        "ENDPOINT": emulator.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": emulator.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_OFFLINE": False,
    }
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", emulator.url)
    monkeypatch.setattr("huggingface_hub.utils._cache_manager.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("transformers.utils.hub._hf_api", None)  # rebuilt lazily with the patched endpoint

    def set_offline(offline: bool = True) -> None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)

    emulator.set_offline = set_offline
    try:
        yield emulator
    finally:
        emulator.stop()
