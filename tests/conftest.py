"""Shared test fixtures: paths to the reference fixtures and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# The reference fixtures live in ../shared/fixtures beside the checkout (SND_FIXTURES overrides).
FIXTURES = Path(os.environ.get("SND_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"reference fixtures not found at {FIXTURES}; set SND_FIXTURES")
    return FIXTURES


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
