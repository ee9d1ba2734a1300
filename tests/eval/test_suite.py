"""`snd eval all --data synthetic` end to end with two tiny random checkpoints, and the result cache."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from snd_hf import SnDConfig, SnDModel
from snd_hf.cli import console_main, main
from snd_hf.eval.features import load_feature_model, parse_model_spec
from snd_hf.eval.suite import PRESETS, _customized, evaluate
from snd_hf.loading import save_original_checkpoint
from snd_hf.run_folder import RunFolder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = SnDModel(SnDConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, image_size=56)).eval()
        model.save_pretrained(root / f"tiny{seed}")
        paths.append(root / f"tiny{seed}")
    save_original_checkpoint(SnDModel.from_pretrained(paths[0]), root / "tiny0.pth")
    return paths, root / "tiny0.pth"


@pytest.mark.slow
def test_snd_eval_all_synthetic_two_models(checkpoints, tmp_path, capsys, monkeypatch):
    (first, second), _ = checkpoints
    import snd_hf.eval.suite as suite

    calls = []
    extract = suite.extract_features
    monkeypatch.setattr(suite, "extract_features", lambda model, images, *a, **k: calls.append(model.name) or extract(model, images, *a, **k))
    out = tmp_path / "out"
    arguments = ["eval", "all", "--model", f"a={first}", "--model", f"b={second}", "--data", "synthetic"]
    arguments += ["--out", str(out), "--preset", "cpu", "--steps", "15", "--synthetic-size", "4x3x42x56"]
    assert main(arguments) == 0
    # Features once per model, image set and resize protocol (train and test frames under timm's resize for
    # depth and segmentation and torch.hub's for normals, pair frames under torch.hub's), shared by the probes.
    assert sorted(calls) == ["a"] * 5 + ["b"] * 5
    payload = json.loads((out / "results.json").read_text())
    assert payload["position_resize"] == {"depth": "timm", "normals": "torchhub", "segmentation": "timm", "correspondence": "torchhub"}
    assert set(payload["results"]) == {"depth", "normals", "segmentation", "correspondence"}
    for task, per_model in payload["results"].items():
        assert set(per_model) == {"a", "b"}, task
    depth = payload["results"]["depth"]["a"]
    assert 0 <= depth["d1"] <= 1 and depth["rmse"] > 0
    assert 0 <= payload["results"]["correspondence"]["b"]["recall@10px"] <= 1
    table = (out / "results.md").read_text()
    assert "## depth" in table and "| a |" in table and "| b |" in table
    # The file and the terminal say the same, overrides included; results.json records every setting.
    assert table.startswith("# Probe results on synthetic4x3 (preset cpu, steps 15, synthetic 4x3x42x56)")
    printed = capsys.readouterr().out
    assert table in printed
    # a line per task as it starts, so a log shows progress where the bars are off
    assert [line for line in printed.splitlines() if line.endswith(": a, b")] == [f"{task}: a, b" for task in payload["tasks"]]
    assert payload["preset_settings"]["synthetic"] == [4, 3, 42, 56] and payload["preset_settings"]["depth"]["steps"] == 15
    assert payload["tasks"] == ["depth", "normals", "segmentation", "correspondence"]
    for picture in ("correspondence_recall.png", "depth/panel_00.png", "normals/panel_00.png", "segmentation/panel_00.png", "pca/depth/pca_00.png"):
        with Image.open(out / picture) as image:
            assert image.width > image.height > 0
    # A second run is served from the result cache: same numbers, no panels to redraw.
    cached = evaluate([f"a={first}"], "synthetic", ("depth",), tmp_path / "again", _small_preset(), cache_dir=out / "cache")
    assert cached["results"]["depth"]["a"] == pytest.approx(depth, nan_ok=True)


def _small_preset():
    return _customized(PRESETS["cpu"], 15, "4x3x42x56")


def test_models_from_original_checkpoints_and_concat_mode(checkpoints):
    (first, _), original = checkpoints
    native = load_feature_model(f"native={first}")
    from_pth = load_feature_model(str(original))
    assert from_pth.name == "tiny0"  # heads are 64 wide, so the .pth architecture is inferred exactly
    concat = load_feature_model(f"c={first}", concat_with=str(original))
    assert concat.concat_with is not None and concat.weights_hash != native.weights_hash
    from snd_hf.eval.features import extract_features

    images = torch.rand(2, 3, 28, 42)
    single = extract_features(native, images, (28, 42))
    double = extract_features(concat, images, (28, 42))
    assert single.patch.shape == (2, 64, 2, 3) and double.patch.shape == (2, 128, 2, 3)
    torch.testing.assert_close(double.patch[:, 64:], single.patch)
    torch.testing.assert_close(double.cls[:, :64], single.cls, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(extract_features(from_pth, images, (28, 42)).patch, single.patch, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(single.prenorm, single.patch)


def test_model_spec_and_argument_errors(tmp_path):
    assert parse_model_spec("snd=./x/y") == ("snd", "./x/y")
    assert parse_model_spec("/a/b/dinov2.pth") == ("dinov2", "/a/b/dinov2.pth")
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_model_spec("=x")
    with pytest.raises(ValueError, match="KIND=ROOT"):
        evaluate(["x"], "nyuv2", out_dir=tmp_path)
    # A missing root is named as the command line wrote it, not by a reader's argument name.
    with pytest.raises(FileNotFoundError, match=r"^--data nyuv2=missing: missing does not exist$"):
        evaluate(["x"], "nyuv2=missing", out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="unknown data kind 'nyu'"):
        evaluate(["x"], "nyu=missing", out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="tasks must be among"):
        evaluate(["x"], "synthetic", tasks=("depthh",), out_dir=tmp_path)


@pytest.mark.slow
def test_eval_refuses_to_replace_another_evaluation(checkpoints, tmp_path, capsys):
    (first, second), _ = checkpoints
    out = tmp_path / "out"
    preset, cache = _small_preset(), tmp_path / "cache"
    first_run = evaluate([f"a={first}"], "synthetic", ("depth",), out, preset, cache_dir=cache)
    # The same evaluation again replaces its own results.
    again = evaluate([f"a={first}"], "synthetic", ("depth",), out, preset, cache_dir=cache)
    assert again["results"] == first_run["results"]
    before = (out / "results.json").read_text()
    # Another model, another task or other settings: refused in one line, the earlier results kept.
    for models, tasks, other, differ in (
        ([f"a={second}"], ("depth",), preset, "models"),
        ([f"a={first}"], ("normals",), preset, "tasks"),
        ([f"a={first}"], ("depth",), _customized(PRESETS["cpu"], 16, "4x3x42x56"), "preset, preset_settings"),
    ):
        with pytest.raises(FileExistsError, match=f"differs in {differ}; see .*snd_run.json\\); pass --overwrite"):
            evaluate(models, "synthetic", tasks, out, other, cache_dir=cache)
        assert (out / "results.json").read_text() == before
    arguments = ["eval", "normals", "--model", f"a={first}", "--data", "synthetic", "--out", str(out)]
    arguments += ["--steps", "15", "--synthetic-size", "4x3x42x56", "--cache-dir", str(cache)]
    assert console_main(arguments) == 2
    message = f"snd: error: {out} holds the results of another run of another model, data or settings (it differs in tasks; see"
    assert message in capsys.readouterr().err
    depth_pictures = json.loads(before)["pictures"]
    assert depth_pictures == [f"depth/panel_0{i}.png" for i in range(3)] + [f"pca/depth/pca_0{i}.png" for i in range(3)]
    assert console_main(arguments + ["--overwrite"]) == 0
    replaced = json.loads((out / "results.json").read_text())
    assert set(replaced["results"]) == {"normals"}
    # The earlier evaluation's pictures are gone (with their emptied folders); the new ones are listed.
    assert replaced["pictures"] == [f"normals/panel_0{i}.png" for i in range(3)] + [f"pca/normals/pca_0{i}.png" for i in range(3)]
    assert not (out / "depth").exists() and not (out / "pca" / "depth").exists()
    assert all((out / name).is_file() for name in replaced["pictures"])


@pytest.mark.slow
def test_panels_are_labelled_and_drawn_from_cached_results(checkpoints, tmp_path):
    (first, second), _ = checkpoints
    cache = tmp_path / "cache"
    preset = _small_preset()
    evaluate([f"a={first}"], "synthetic", ("depth",), tmp_path / "one", preset, cache_dir=cache)
    # b is new, a comes from the cache: the panel still shows both, each under its name.
    evaluate([f"a={first}", f"b={second}"], "synthetic", ("depth",), tmp_path / "two", preset, cache_dir=cache)
    with Image.open(tmp_path / "one" / "depth" / "panel_00.png") as one, Image.open(tmp_path / "two" / "depth" / "panel_00.png") as two:
        assert two.width > one.width and two.height == one.height
        # The panel above the images holds the captions: not all white.
        assert min(two.convert("L").crop((0, 0, two.width, 8)).getdata()) < 128


def _tree(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_a_hand_edited_results_json_never_deletes_user_files(checkpoints, tmp_path):
    (first, _), _ = checkpoints
    out, preset, cache = tmp_path / "out", _small_preset(), tmp_path / "cache"
    evaluate([f"a={first}"], "synthetic", ("depth",), out, preset, cache_dir=cache)
    user = {"notes.txt": b"my notes", "mydata/a.csv": b"1,2\n", "r": b"r", "e": b"e", "s": b"s", "pca/keep.png": b"png"}
    for name, data in user.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    drawn = sorted(json.loads((out / "results.json").read_text())["pictures"])
    for pictures in (["notes.txt", "mydata/a.csv", "results.md", "../cache/results"], "results"):
        record = json.loads((out / "results.json").read_text())
        record["pictures"] = pictures  # the earlier code deleted every listed path it did not redraw
        (out / "results.json").write_text(json.dumps(record))
        evaluate([f"a={first}"], "synthetic", ("depth",), out, preset, cache_dir=cache)  # the same evaluation again
        after = _tree(out)
        assert {name: after[name] for name in user} == user  # byte-identical
        assert sorted(json.loads(after["results.json"])["pictures"]) == drawn and "results.md" in after


def test_eval_into_a_user_folder_or_beside_a_running_eval_is_refused(checkpoints, tmp_path):
    (first, _), _ = checkpoints
    preset, cache = _small_preset(), tmp_path / "cache"
    mine = tmp_path / "mine"
    (mine / "depth").mkdir(parents=True)
    (mine / "results.md").write_text("my own results")
    (mine / "depth" / "panel_00.png").write_bytes(b"my own panel")
    before = _tree(mine)
    with pytest.raises(FileExistsError, match=r"mine is not empty \(depth/panel_00.png, results.md\) and no snd run wrote it"):
        evaluate([f"a={first}"], "synthetic", ("depth",), mine, preset, cache_dir=cache)
    assert _tree(mine) == before

    # Two evaluations into one folder at once: the second is refused at once; the first's results stand.
    out = tmp_path / "out"
    with RunFolder(out, "snd eval", {"held": "by a concurrent evaluation"}):
        with pytest.raises(BlockingIOError, match=f"{out} is being written by PID {os.getpid()} .*snd eval"):
            evaluate([f"a={first}"], "synthetic", ("depth",), out, preset, cache_dir=cache)
    assert not (out / "results.json").exists()


def test_pca_panels_colour_every_model_in_one_basis(tmp_path):
    # Model b's features are model a's times 3. Fit alone, each would get the same colours; in the
    # comparison's one basis they differ, as the features do. A model of another width gets its own.
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    from snd_hf.eval.suite import _pca_panels

    class Test:
        images = torch.rand(2, 3, 56, 70)

        def __len__(self):
            return 2

    torch.manual_seed(0)
    base = torch.randn(2, 8, 4, 5)
    features = {"a": base, "b": base * 3, "a again": base.clone(), "wide": torch.randn(2, 16, 4, 5)}
    store = lambda model, data, resize: SimpleNamespace(patch=features[model.name])  # noqa: E731
    models = [SimpleNamespace(name=name) for name in ("a", "b", "a again")]
    paths = _pca_panels(Test(), models, store, 2, tmp_path / "shared", "torchhub")
    assert [path.name for path in paths] == ["pca_00.png", "pca_01.png"]
    panel = np.asarray(Image.open(paths[0]).convert("RGB"))[-56:]  # the pictures' row: image | a | b | a again
    a, b, again = (panel[:, 74 * k + 2 : 74 * k + 68] for k in (1, 2, 3))
    assert np.array_equal(a, again) and not np.array_equal(a, b)
    (mixed,) = _pca_panels(Test(), [*models, SimpleNamespace(name="wide")], store, 1, tmp_path / "mixed", "torchhub")
    assert Image.open(mixed).width > Image.open(paths[0]).width
