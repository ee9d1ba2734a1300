"""--push_to_hub: the Hub's reachability, the token and the repository are checked before any compute."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from snd_hf.training.push import check_push_access

TRAIN = Path(__file__).resolve().parents[2] / "training" / "train.py"


def _train_main(argv: list[str]) -> None:
    spec = importlib.util.spec_from_file_location("snd_train_script", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)


def test_access_check_creates_the_repository(hub):
    url = check_push_access("me/snd-new")
    assert url.endswith("/me/snd-new") and ("model", "me/snd-new") in hub.repos
    assert check_push_access("me/snd-new").endswith("/me/snd-new")  # an existing one is fine too


def test_missing_or_rejected_token_fails_before_anything(hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(PermissionError, match="--push_to_hub needs a Hugging Face token with write access to 'me/x'"):
        check_push_access("me/x")
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_emulators_token")
    with pytest.raises(PermissionError, match=r"the Hugging Face token was rejected \(invalid or expired\)"):
        check_push_access("me/x")
    assert ("model", "me/x") not in hub.repos


def test_unreachable_hub_or_offline_mode_fails_fast(hub):
    hub.set_offline(True)
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE is set"):
        check_push_access("me/x")
    hub.set_offline(False)
    hub.stop()  # nothing listens on its port any more
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"the Hugging Face Hub at http://127\.0\.0\.1:\d+ could not be reached \(ConnectError"):
        check_push_access("me/x")
    assert time.perf_counter() - start < 5


def test_train_checks_the_hub_before_generating_or_building_anything(hub, tmp_path):
    hub.stop()
    output_dir, scenes = tmp_path / "run", tmp_path / "scenes"
    argv = ["--output_dir", str(output_dir), "--dataset_path", str(scenes), "--push_to_hub", "--hub_model_id", "me/snd-tiny"]
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="could not be reached"):
        _train_main(argv)
    assert time.perf_counter() - start < 10
    assert not output_dir.exists() and not scenes.exists()  # nothing generated, trained or written
