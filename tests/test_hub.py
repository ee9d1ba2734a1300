"""Hub paths, tested for real against the Hub emulator (tests/hub_emulator.py)."""

from __future__ import annotations

import huggingface_hub
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError


# ----------------------------------------------------------------------------- the emulator itself
def test_emulator_download_listing_and_errors(hub):
    weights = bytes(range(256)) * 64
    hub.add_file("org/repo", "config.json", b'{"a": 1}')
    hub.add_file("org/repo", "sub/model.safetensors", weights)
    path = huggingface_hub.hf_hub_download("org/repo", "sub/model.safetensors")
    assert open(path, "rb").read() == weights
    assert open(huggingface_hub.hf_hub_download("org/repo", "config.json"), "rb").read() == b'{"a": 1}'

    api = HfApi()
    assert sorted(api.list_repo_files("org/repo")) == ["config.json", "sub/model.safetensors"]
    info = api.model_info("org/repo", files_metadata=True)
    assert info.sha == hub.head("org/repo")
    lfs = {sibling.rfilename: sibling.lfs for sibling in info.siblings}
    assert lfs["config.json"] is None and lfs["sub/model.safetensors"].size == len(weights)

    snapshot = huggingface_hub.snapshot_download("org/repo")
    assert open(f"{snapshot}/sub/model.safetensors", "rb").read() == weights

    with pytest.raises(EntryNotFoundError):
        huggingface_hub.hf_hub_download("org/repo", "missing.json")
    with pytest.raises(RepositoryNotFoundError):
        huggingface_hub.hf_hub_download("org/nothing", "config.json")

    # Offline: the cache answers, nothing reaches the server.
    hub.set_offline(True)
    served = len(hub.requests)
    assert open(huggingface_hub.hf_hub_download("org/repo", "config.json"), "rb").read() == b'{"a": 1}'
    with pytest.raises(LocalEntryNotFoundError):
        huggingface_hub.hf_hub_download("org/repo", "never-downloaded.json")
    assert len(hub.requests) == served


def test_emulator_uploads(hub, tmp_path):
    api = HfApi()
    url = api.create_repo("writer/up", exist_ok=False)
    assert url.repo_id == "writer/up"
    api.create_repo("writer/up", exist_ok=True)
    api.upload_file(path_or_fileobj=b"hello", path_in_repo="notes.txt", repo_id="writer/up")
    folder = tmp_path / "folder"
    (folder / "nested").mkdir(parents=True)
    (folder / "nested" / "weights.bin").write_bytes(b"\x00\x01" * 5000)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# card\n")
    api.upload_folder(folder_path=folder, repo_id="writer/up")
    assert hub.files("writer/up") == {
        "notes.txt": b"hello",
        "nested/weights.bin": b"\x00\x01" * 5000,
        "README.md": b"---\nlicense: mit\n---\n# card\n",
    }
    with pytest.raises(ValueError, match="Invalid metadata"):
        api.upload_file(path_or_fileobj=b"---\n[unclosed\n---\n", path_in_repo="README.md", repo_id="writer/up")
    # Overwriting keeps the older revision downloadable, by commit oid.
    old = hub.head("writer/up")
    commit = api.upload_file(path_or_fileobj=b"bye", path_in_repo="notes.txt", repo_id="writer/up")
    assert commit.oid == hub.head("writer/up") != old
    assert open(huggingface_hub.hf_hub_download("writer/up", "notes.txt"), "rb").read() == b"bye"
    assert open(huggingface_hub.hf_hub_download("writer/up", "notes.txt", revision=old), "rb").read() == b"hello"
