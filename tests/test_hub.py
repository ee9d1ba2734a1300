"""Hub paths, tested for real against the Hub emulator (tests/hub_emulator.py)."""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModel

from snd_hf import SnDBackbone, SnDConfig, SnDModel
from snd_hf.configuration_snd import SND_VARIANTS
from snd_hf.loading import CheckpointError
from snd_hf.cli import main as snd
from snd_hf.hub import SND_HUB_REPO, VARIANT_FILES, VARIANT_FOLDERS, list_repo_files


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


# ----------------------------------------------------------------------------- SnD variants
VARIANTS = [("small", True), ("small", False), ("base", True), ("base", False)]


@pytest.fixture(scope="session")
def original_checkpoints(fixtures_dir) -> dict[tuple[str, bool], bytes]:
    """Full-size random state dicts in the original torch.hub layout, one per published variant.

    Keys and shapes are those of the real ViT-S/14 and ViT-B/14 (fixtures); each variant file is
    told apart by its CLS token (``variant_marker``). Built once per session (~0.9 GB of bytes).
    """
    checkpoints = {}
    for size, arch in (("small", "vits14"), ("base", "vitb14")):
        shapes = json.loads((fixtures_dir / "dinov2" / f"dinov2_{arch}_keys.json").read_text())
        # Large matrices are zeros (cheap to make); everything else is random, so features are not trivial.
        generator = torch.Generator().manual_seed(len(shapes))
        state_dict = {
            key: torch.zeros(shape) if len(shape) == 2 and shape[0] * shape[1] > 10**5 else
            torch.randn(shape, generator=generator) * 0.1
            for key, shape in shapes.items()
        }
        for blending in (True, False):
            state_dict["cls_token"] = variant_marker(size, blending, state_dict["cls_token"].shape)
            buffer = io.BytesIO()
            torch.save(state_dict, buffer)
            checkpoints[(size, blending)] = buffer.getvalue()
    return checkpoints


def variant_marker(size: str, blending: bool, shape=None) -> torch.Tensor:
    shape = shape or (1, 1, SND_VARIANTS[size]["hidden_size"])
    return torch.full(shape, 0.25 if blending else -0.25)


def assert_variant(model, size: str, blending: bool) -> None:
    assert isinstance(model, SnDModel)
    assert (model.config.size, model.config.blending) == (size, blending)
    assert model.config.hidden_size == SND_VARIANTS[size]["hidden_size"]
    assert model.config.num_attention_heads == SND_VARIANTS[size]["num_attention_heads"]
    torch.testing.assert_close(model.embeddings.cls_token, variant_marker(size, blending))
    assert not model.training
    output = model(torch.randn(1, 3, 28, 42))
    assert output.feature_map.shape == (1, model.config.hidden_size, 2, 3)
    assert torch.isfinite(output.feature_map).all()


@pytest.mark.slow
def test_published_variants_download_convert_and_work_offline(hub, original_checkpoints):
    for (size, blending), data in original_checkpoints.items():
        hub.add_file(SND_HUB_REPO, VARIANT_FILES[(size, blending)], data)
    hub.add_file(SND_HUB_REPO, "README.md", b"# SnD\n")

    default = SnDModel.from_pretrained(SND_HUB_REPO)
    assert_variant(default, "small", True)
    for size, blending in VARIANTS:
        assert_variant(SnDModel.from_pretrained(SND_HUB_REPO, size=size, blending=blending), size, blending)
    # The original file went through the cache, where huggingface_hub put it.
    cached = huggingface_hub.try_to_load_from_cache(SND_HUB_REPO, VARIANT_FILES[("base", False)])
    assert isinstance(cached, str) and open(cached, "rb").read(64) == original_checkpoints[("base", False)][:64]

    # Offline: the same calls are answered from the cache, without a single request.
    hub.set_offline(True)
    served = len(hub.requests)
    assert_variant(SnDModel.from_pretrained(SND_HUB_REPO, size="base", blending=False), "base", False)
    assert_variant(SnDModel.from_pretrained(SND_HUB_REPO), "small", True)
    assert len(hub.requests) == served


@pytest.mark.slow
def test_missing_variant_and_revision(hub, original_checkpoints, tmp_path):
    hub.add_file("lab/snd-small", VARIANT_FILES[("small", True)], original_checkpoints[("small", True)])
    first = hub.head("lab/snd-small")
    hub.add_file("lab/snd-small", VARIANT_FILES[("small", False)], original_checkpoints[("small", False)])
    with pytest.raises(FileNotFoundError) as error:
        SnDModel.from_pretrained("lab/snd-small", size="base", blending=False)
    message = str(error.value)
    assert "dinov2_base_snd_no_blending.pth" in message
    assert "small (blending): dinov2_small_snd.pth" in message and "small (no blending)" in message
    # At the first commit only the blending file existed.
    with pytest.raises(FileNotFoundError, match="small_no_blending"):
        SnDModel.from_pretrained("lab/snd-small", blending=False, revision=first)
    assert_variant(SnDModel.from_pretrained("lab/snd-small", blending=False), "small", False)
    with pytest.raises(RepositoryNotFoundError):
        SnDModel.from_pretrained("lab/absent")
    with pytest.raises(ValueError, match="size"):
        SnDModel.from_pretrained("lab/snd-small", size="large")
    with pytest.raises(TypeError, match="device_map"):
        SnDModel.from_pretrained("lab/snd-small", device_map="cpu")
    # Download options reach huggingface_hub: cache_dir, local_files_only, force_download.
    cache_dir = tmp_path / "own-cache"
    with pytest.raises(OSError, match="nothing of it is in the cache"):
        SnDModel.from_pretrained("lab/snd-small", blending=False, cache_dir=cache_dir, local_files_only=True)
    assert_variant(SnDModel.from_pretrained("lab/snd-small", blending=False, cache_dir=cache_dir), "small", False)
    assert list(cache_dir.glob(f"models--lab--snd-small/snapshots/*/{VARIANT_FILES[('small', False)]}"))
    served = len(hub.requests)
    SnDModel.from_pretrained("lab/snd-small", blending=False, cache_dir=cache_dir, local_files_only=True)
    assert len(hub.requests) == served
    SnDModel.from_pretrained("lab/snd-small", blending=False, cache_dir=cache_dir, force_download=True)
    assert ("GET", f"/lab/snd-small/resolve/main/{VARIANT_FILES[('small', False)]}") in hub.requests[served:]
    # Offline, a variant never downloaded is reported as such; a revision never seen is an OSError.
    hub.set_offline(True)
    with pytest.raises(FileNotFoundError, match=r"dinov2_small_snd\.pth.*Offline"):
        SnDModel.from_pretrained("lab/snd-small", blending=True)
    with pytest.raises(OSError, match="offline mode is on"):
        SnDModel.from_pretrained("lab/snd-small", revision=first)


def test_local_folder_laid_out_like_the_hub_repo(tmp_path, original_checkpoints):
    for blending in (True, False):
        (tmp_path / VARIANT_FILES[("small", blending)]).write_bytes(original_checkpoints[("small", blending)])
    assert_variant(SnDModel.from_pretrained(tmp_path), "small", True)
    assert_variant(SnDModel.from_pretrained(str(tmp_path), blending=False), "small", False)
    backbone = SnDBackbone.from_pretrained(tmp_path, out_features=["stage6", "stage12"])
    assert (backbone.config.size, backbone.config.blending) == ("small", True)
    assert [m.shape for m in backbone(torch.randn(1, 3, 28, 28)).feature_maps] == [(1, 384, 2, 2)] * 2
    with pytest.raises(FileNotFoundError, match=r"dinov2_base_snd\.pth.*Variants available"):
        SnDModel.from_pretrained(tmp_path, size="base")
    with pytest.raises(FileNotFoundError, match="no such folder: .*absent"):
        SnDModel.from_pretrained(tmp_path / "absent")
    half = SnDModel.from_pretrained(tmp_path, dtype=torch.bfloat16, attn_implementation="eager", subfolder="")
    assert half.embeddings.cls_token.dtype == torch.bfloat16 and half.config._attn_implementation == "eager"


def tiny_model(size: str = "small", blending: bool | None = True, seed: int = 0) -> SnDModel:
    torch.manual_seed(seed)
    config = SnDConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, size=size, blending=blending)
    return SnDModel(config).eval()


def test_native_repo_with_variant_subfolders(hub, tmp_path):
    models = {key: tiny_model(*key, seed=index) for index, key in enumerate(VARIANTS)}
    for key, model in models.items():
        model.save_pretrained(tmp_path / VARIANT_FOLDERS[key])
    del models[("base", False)]
    (tmp_path / "base_no_blending" / "config.json").unlink()  # an incomplete variant does not count
    HfApi().create_repo("lab/native-variants")
    HfApi().upload_folder(folder_path=tmp_path, repo_id="lab/native-variants")
    pixel_values = torch.randn(2, 3, 28, 28)
    for source in ("lab/native-variants", tmp_path):
        for key, model in models.items():
            loaded = SnDModel.from_pretrained(source, size=key[0], blending=key[1])
            assert (loaded.config.size, loaded.config.blending) == key
            torch.testing.assert_close(loaded(pixel_values).feature_map, model(pixel_values).feature_map)
        with pytest.raises(FileNotFoundError, match=r"base_no_blending/config\.json.*small \(blending\): small/"):
            SnDModel.from_pretrained(source, size="base", blending=False)


def test_push_to_hub_then_from_pretrained_and_automodel(hub):
    model = tiny_model("base", False, seed=3)
    commit = model.push_to_hub("lab/pushed")
    assert commit.oid == hub.head("lab/pushed")
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub.files("lab/pushed"))
    pixel_values = torch.randn(1, 3, 42, 28)
    expected = model(pixel_values)
    for loaded in (SnDModel.from_pretrained("lab/pushed"), AutoModel.from_pretrained("lab/pushed")):
        assert type(loaded) is SnDModel
        assert (loaded.config.size, loaded.config.blending) == ("base", False)
        output = loaded(pixel_values)
        torch.testing.assert_close(output.feature_map, expected.feature_map, rtol=0, atol=0)
        torch.testing.assert_close(output.pooler_output, expected.pooler_output, rtol=0, atol=0)
    # Asking a single native checkpoint for another variant is an error, not a silent mismatch.
    with pytest.raises(ValueError, match="blending"):
        SnDModel.from_pretrained("lab/pushed", blending=True)
    hub.set_offline(True)
    torch.testing.assert_close(SnDModel.from_pretrained("lab/pushed")(pixel_values).feature_map, expected.feature_map)


# ----------------------------------------------------------------------------- strict native loading
def _rewrite(folder: Path, config: dict | None = None, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Change a saved native folder's config.json fields and/or replace its weights."""
    if config:
        values = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**values, **config}))
    if weights is not None:
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_native_weights_must_match_their_config(tmp_path, hub):
    model = tiny_model()
    for name in ("three_layers", "extra_key", "wider"):
        model.save_pretrained(tmp_path / name)
    _rewrite(tmp_path / "three_layers", config={"num_hidden_layers": 3})
    _rewrite(tmp_path / "extra_key", weights={**model.state_dict(), "head.weight": torch.zeros(3, 32)})
    _rewrite(tmp_path / "wider", config={"hidden_size": 64, "num_attention_heads": 4})
    expected = {
        "three_layers": r"missing \(14\): encoder.layer.2.attention.proj.bias, encoder.layer.2.attention.proj.weight",
        "extra_key": r"model.safetensors does not match the expected weights; unexpected \(1\): head.weight",
        "wider": r"model.safetensors: this checkpoint is 32 wide with 2 layers; the config says 64 wide with 2 layers: build",
    }
    for name, message in expected.items():
        for loader in (SnDModel, SnDBackbone, AutoModel):
            with pytest.raises(CheckpointError, match=message):
                loader.from_pretrained(tmp_path / name)
    HfApi().create_repo("lab/three-layers")
    HfApi().upload_folder(folder_path=tmp_path / "three_layers", repo_id="lab/three-layers")
    with pytest.raises(CheckpointError, match=r"lab/three-layers/model.safetensors .*missing \(14\): encoder.layer.2"):
        AutoModel.from_pretrained("lab/three-layers")


def test_sharded_native_checkpoints_are_checked_and_load(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    loaded = SnDModel.from_pretrained(tmp_path / "sharded")
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in model.state_dict().items())
    _rewrite(tmp_path / "sharded", config={"num_hidden_layers": 3})
    with pytest.raises(CheckpointError, match=r"sharded/model.safetensors.index.json does not match .*missing \(14\)"):
        SnDModel.from_pretrained(tmp_path / "sharded")


def test_absurd_config_fails_before_anything_is_built(tmp_path, monkeypatch):
    tiny_model().save_pretrained(tmp_path / "huge")

    def never(*args, **kwargs):
        raise AssertionError("a model was built for an implausible config")

    monkeypatch.setattr(SnDModel, "__init__", never)
    for layers in (4096, 100_000, 10**12):
        _rewrite(tmp_path / "huge", config={"num_hidden_layers": layers})
        start = time.perf_counter()
        lacking = rf"encoder.layer.4.\* to encoder.layer.{layers - 1}.\* \({layers - 4} layers in the config, none in the weights\)"
        if layers > 4096:  # beyond the schema's cap: refused by the schema layer, naming the file and key
            lacking = rf"huge/config.json: num_hidden_layers must be less than or equal to 4096 \(got {layers}\)"
        with pytest.raises(CheckpointError, match=lacking):
            SnDModel.from_pretrained(tmp_path / "huge")
        assert time.perf_counter() - start < 5  # generous: the refusal does not depend on the claimed size


def test_corrupt_native_files_are_named(tmp_path):
    model = tiny_model()
    for name in ("garbage", "truncated", "nan", "bad_config"):
        model.save_pretrained(tmp_path / name)
    weights = tmp_path / "garbage" / "model.safetensors"
    weights.write_bytes(b"\x00" * 64)
    truncated = tmp_path / "truncated" / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    state = {key: value.clone() for key, value in model.state_dict().items()}
    state["encoder.layer.1.mlp.fc1.weight"][2, 3] = float("nan")
    _rewrite(tmp_path / "nan", weights=state)
    (tmp_path / "bad_config" / "config.json").write_text("{not json")
    expected = {
        "garbage": f"cannot read {weights}: not a valid safetensors file",
        "truncated": f"cannot read {truncated}: not a valid safetensors file",
        "nan": r"nan/model.safetensors: encoder.layer.1.mlp.fc1.weight holds 1 non-finite value",
        "bad_config": r"bad_config/config.json: not valid JSON .*: the checkpoint.s config is corrupt",
    }
    for name, message in expected.items():
        with pytest.raises(CheckpointError, match=message):
            SnDModel.from_pretrained(tmp_path / name)


# ----------------------------------------------------------------------------- local paths, revisions
def test_local_looking_paths_fail_at_once_without_the_network(tmp_path, hub, monkeypatch, fixtures_dir):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-checkpoints").mkdir()
    Image.new("RGB", (28, 28)).save(tmp_path / "room.png")
    served = len(hub.requests)
    reasons = {
        "my-checkpoints/snd-small": "the folder 'my-checkpoints' exists here",
        "./snd-small": "it starts with",
        "../elsewhere/snd-small": "it starts with",
        "~/no-such-snd-folder": "it starts with",
        "runs/2026/snd-small": "more than one '/'",
        "snd-small.pth": "it names a file",
        "not a repo!": "not a valid Hub repo id",
    }
    for name, reason in reasons.items():
        start = time.perf_counter()
        with pytest.raises(FileNotFoundError, match=f"no such folder: .*{re.escape(reason)}"):
            SnDModel.from_pretrained(name)
        assert time.perf_counter() - start < 2, name
    for command in (["extract", "room.png", "--out", "features"], ["demo", "--out", "demo"]):
        with pytest.raises(FileNotFoundError, match="no such folder: my-checkpoints/snd-small"):
            snd([*command, "--model", "my-checkpoints/snd-small"])
    assert len(hub.requests) == served  # none of it reached the Hub
    with pytest.raises(RepositoryNotFoundError):
        SnDModel.from_pretrained("lab/absent")  # a repo id still goes to the Hub
    assert len(hub.requests) > served
    with pytest.raises(NotADirectoryError, match="tiny_a.pth is a file, not a checkpoint folder"):
        SnDModel.from_pretrained(fixtures_dir / "dinov2" / "tiny_a.pth")


def test_revision_cannot_name_a_path_outside_the_cache(hub, tmp_path):
    outside = tmp_path / "cache" / "elsewhere"
    outside.mkdir(parents=True)
    served = len(hub.requests)
    for revision in ("../../elsewhere", "/etc", "main/../../x", "a\\b"):
        with pytest.raises(ValueError, match="revision must be a branch, tag or commit id"):
            SnDModel.from_pretrained("lab/repo", revision=revision, cache_dir=tmp_path / "cache")
        with pytest.raises(ValueError, match="revision must be a branch, tag or commit id"):
            list_repo_files("lab/repo", revision=revision, cache_dir=tmp_path / "cache", local_files_only=True)
    assert len(hub.requests) == served


def test_big_folders_are_probed_not_listed(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a folder was listed recursively")

    monkeypatch.setattr(Path, "rglob", never)
    monkeypatch.setattr(Path, "glob", never)
    monkeypatch.setattr(os, "walk", never)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"/usr has no small \(blending\) variant.*It holds no SnD variant"):
        SnDModel.from_pretrained("/usr")
    assert time.perf_counter() - start < 2


def test_folder_moved_aside_by_a_crash_is_restored_on_load(tmp_path, caplog, monkeypatch):
    model = tiny_model()
    model.save_pretrained(tmp_path / ".out.old")  # replace_path's state after a crash between its renames
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="snd_hf.files"):
        loaded = SnDModel.from_pretrained("out")  # a bare name: restored, not sent to the Hub
    assert "restored out from .out.old, left by an interrupted write" in caplog.text
    assert (tmp_path / "out").is_dir() and not (tmp_path / ".out.old").exists()
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in model.state_dict().items())
