"""The `snd` executable: --version, defaults in every --help, and one-line errors (--debug: tracebacks)."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import types

import pytest
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.utils import httpx

import snd_hf
from snd_hf.cli import COMMANDS, build_parser, console_main, run_with_errors
from snd_hf.loading import CheckpointError

SND = shutil.which("snd", path=os.path.dirname(sys.executable)) or "snd"


def test_version_comes_from_the_package_metadata():
    result = subprocess.run([SND, "--version"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"snd {importlib.metadata.version('snd-hf')}\n"
    assert importlib.metadata.version("snd-hf") == snd_hf.__version__  # one source: snd_hf.__version__


def test_an_expected_error_is_one_line_on_stderr_with_status_2(tmp_path):
    # The real executable, so that library warnings or logging on stderr would be caught too.
    result = subprocess.run(
        [SND, "eval", "depth", "--model", "m", "--data", "nonsense", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "snd: error: --data must be 'synthetic' or KIND=ROOT, got 'nonsense' (add --debug for the traceback)"
    ]
    assert not (tmp_path / "out").exists()


def test_debug_anywhere_shows_the_traceback():
    for argv in (["--debug", "eval", "depth", "--model", "m", "--data", "x"], ["eval", "depth", "--model", "m", "--data", "x", "--debug"]):
        with pytest.raises(ValueError, match="--data must be 'synthetic' or KIND=ROOT"):
            console_main(argv)


def _raiser(error: BaseException):
    def entry(argv: list[str]) -> int:
        raise error

    return entry


@pytest.mark.parametrize(
    "error, message",
    [
        (FileNotFoundError("image not found: a.png"), "image not found: a.png"),
        (PermissionError(13, "Permission denied", "/root/x"), "[Errno 13] Permission denied: '/root/x'"),
        (CheckpointError("x.pth is not a PyTorch or safetensors checkpoint"), "x.pth is not a PyTorch or safetensors checkpoint"),
        (ValueError("--steps must be >= 1, got 0\n  (a second line)"), "--steps must be >= 1, got 0 (a second line)"),
        (httpx.ConnectError("[Errno 111] Connection refused"), "[Errno 111] Connection refused"),
        (
            RepositoryNotFoundError("404 Client Error.\n\nRepository Not Found", response=httpx.Response(404, request=httpx.Request("GET", "http://hub/x"))),
            "404 Client Error. Repository Not Found",
        ),
        (OSError(), "OSError"),
        # A closing period is dropped: the hint in parentheses ends the sentence.
        (ValueError("learning_rate must be > 0, got 0.0."), "learning_rate must be > 0, got 0.0"),
        (ValueError("did you mean 'extract'?"), "did you mean 'extract'?"),
    ],
)
def test_user_errors_become_one_line(error, message, capsys):
    assert run_with_errors(_raiser(error), [], prog="snd") == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"snd: error: {message} (add --debug for the traceback)\n"


def test_an_error_named_by_its_dotted_path_is_caught_once_its_module_is_loaded(capsys, monkeypatch):
    # train.py names NonFiniteError this way: its module (torch) loads only when the run starts.
    class Late(RuntimeError):
        pass

    module = types.ModuleType("late_errors")
    module.Late = Late
    monkeypatch.setitem(sys.modules, "late_errors", module)
    assert run_with_errors(_raiser(Late("step 3 is not finite.")), [], prog="train.py", errors=("late_errors.Late",)) == 2
    assert capsys.readouterr().err == "train.py: error: step 3 is not finite (add --debug for the traceback)\n"
    with pytest.raises(Late):  # a class of a module never imported cannot have been raised by it: a bug
        run_with_errors(_raiser(Late("x")), [], prog="train.py", errors=("not_imported_errors.Late",))


def test_interrupt_is_one_line_with_status_130(capsys):
    assert run_with_errors(_raiser(KeyboardInterrupt()), [], prog="train.py") == 130
    assert capsys.readouterr().err == "train.py: interrupted\n"


def test_a_missing_optional_dependency_names_its_extra(capsys):
    # scipy is declared in the "eval" extra (pyproject.toml): the message says how to install it.
    assert run_with_errors(_raiser(ModuleNotFoundError("No module named 'scipy'", name="scipy")), [], "snd") == 2
    assert capsys.readouterr().err == "snd: error: No module named 'scipy': install it with pip install 'snd-hf[eval]'\n"


@pytest.mark.parametrize(
    "error",
    [RuntimeError("shape mismatch"), KeyError(101), TypeError("bad"), ModuleNotFoundError("No module named 'nowhere'", name="nowhere")],
)
def test_bugs_keep_their_traceback(error, capsys):
    with pytest.raises(type(error)):
        run_with_errors(_raiser(error), [], prog="snd")
    assert capsys.readouterr().err == ""


def test_debug_is_taken_out_and_success_passes_through():
    seen = []

    def entry(argv):
        seen.append(argv)
        return None

    assert run_with_errors(entry, ["--max_steps", "2", "--debug"], prog="train.py") == 0
    assert seen == [["--max_steps", "2"]]
    with pytest.raises(FileNotFoundError):
        run_with_errors(_raiser(FileNotFoundError("x")), ["--debug"], prog="train.py")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_shows_its_default(command):
    # Commands with subcommands (snd field fit|segment|edit) are checked one level down.
    parser = _subparsers(build_parser([command]))[command]
    parsers = {f"{command} {sub}": child for sub, child in _subparsers(parser).items()} or {command: parser}
    options_with_defaults = []
    for name, subparser in parsers.items():
        formatter = subparser._get_formatter()
        for action in subparser._actions:
            if not action.option_strings or action.default in (None, argparse.SUPPRESS) or action.nargs == 0 or action.required:
                continue
            assert action.help, f"snd {name} {action.option_strings[-1]} has no help text"
            shown = formatter._expand_help(action)  # the text --help prints for this option
            assert "default" in shown and str(action.default) in shown, f"snd {name} --help hides a default: {shown!r}"
            options_with_defaults.append(action)
    assert options_with_defaults or command == "convert"


# Each command line runs in one fresh interpreter; after each, the heavy modules must still be absent.
_LIGHT_COMMAND_LINES = [
    ["--version"],
    ["--help"],
    ["extarct"],  # a typo of a command
    *([name, "--help"] for name in COMMANDS),
    *(["field", sub, "--help"] for sub in ("fit", "segment", "edit")),
    ["extract", "a.png", "--modle", "m", "--out", "o"],  # a typo of an option
    ["eval", "depth", "--model", "m", "--data", "synthetic", "--preset", "gpu"],  # a bad choice
    ["synth", "--size", "96", "--out", "o"],  # a bad value
    ["convert"],  # a missing argument
    ["extract", "nosuch.jpg", "--model", "m", "--out", "o"],  # a missing image: checked before torch loads
    ["demo", "--images", "nosuch.png"],
]
_LIGHT_CHECK = """
import json, sys
from snd_hf.cli import console_main
loaded = []
for argv in json.loads(sys.argv[1]):
    try:
        console_main(argv)
    except SystemExit as exit:
        assert exit.code in (0, 2), (argv, exit.code)
    loaded.append([name for name in ("torch", "transformers") if name in sys.modules])
print(json.dumps(loaded))
"""


def test_help_version_and_argument_errors_import_neither_torch_nor_transformers():
    result = subprocess.run(
        [sys.executable, "-c", _LIGHT_CHECK, json.dumps(_LIGHT_COMMAND_LINES)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert dict(zip(map(" ".join, _LIGHT_COMMAND_LINES), loaded)) == {" ".join(argv): [] for argv in _LIGHT_COMMAND_LINES}
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert "snd: error: argument COMMAND: invalid choice: 'extarct'; did you mean 'extract'? (choose from convert, demo, extract, synth, eval, field)" in errors
    assert "snd extract: error: unrecognized argument '--modle'; did you mean '--model'?" in errors
    assert "snd: error: image not found: nosuch.jpg (add --debug for the traceback)" in errors
    assert "snd: error: image not found: nosuch.png (add --debug for the traceback)" in errors


def test_extract_names_a_missing_or_unreadable_image_in_one_line_before_any_output(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    result = subprocess.run(
        [SND, "extract", "nosuch.jpg", "--model", "m", "--out", "o"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["snd: error: image not found: nosuch.jpg (add --debug for the traceback)"]
    result = subprocess.run(
        [SND, "extract", "notes.jpg", "--model", "m", "--out", "o"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("snd: error: ") and "notes.jpg" in line and line.endswith(" (add --debug for the traceback)")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.jpg"]  # no output folder


@pytest.mark.parametrize(
    "argv, error",
    [
        (["evl"], "snd: error: argument COMMAND: invalid choice: 'evl'; did you mean 'eval'?"),
        (["--verison"], "snd: error: unrecognized argument '--verison'; did you mean '--version'?"),
        (["field", "segmnet", "r.field"], "snd field: error: argument {fit,segment,edit}: invalid choice: 'segmnet'; did you mean 'segment'?"),
        (["field", "segment", "r.field", "--clik", "3,3", "--out", "o"], "snd field segment: error: unrecognized argument '--clik'; did you mean '--click'?"),
        (["eval", "depth", "--model=m", "--dta=synthetic"], "snd eval: error: unrecognized argument '--dta'; did you mean '--data'?"),
        # No close match: argparse's own error, unchanged.
        (["xyzzy"], "snd: error: argument COMMAND: invalid choice: 'xyzzy' (choose from"),
        (["convert", "a", "b", "--zzzzzz"], "snd: error: unrecognized arguments: --zzzzzz"),
    ],
)
def test_a_mistyped_command_or_option_names_the_closest(argv, error, capsys):
    with pytest.raises(SystemExit) as exit:
        console_main(argv)
    assert exit.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert line.startswith(error)


def test_abbreviations_and_values_after_double_dash_are_not_typos():
    # argparse accepts unique prefixes (--pca-sc for --pca-scale); words after "--" are values, not options.
    subparser = _subparsers(build_parser(["extract"]))["extract"]
    args = subparser.parse_args(["--model", "m", "--out", "o", "--pca-sc", "3", "--", "--looks-like-an-option.png"])
    assert args.pca_scale == 3 and [str(image) for image in args.images] == ["--looks-like-an-option.png"]


_REGISTRATION_CHECK = """
import sys
{first}
light = "torch" not in sys.modules  # after the first import alone
{second}
from transformers import AutoModel
print(light, type(AutoModel.from_pretrained({folder!r})).__name__)
"""


@pytest.mark.parametrize(
    "order",
    [("import snd_hf", "import transformers"), pytest.param(("import transformers", "import snd_hf"), marks=pytest.mark.slow)],
)
def test_import_snd_hf_is_light_and_registers_the_auto_classes_in_either_order(order):
    # `import snd_hf` alone loads no torch; once transformers is imported too (before or after), the
    # Auto classes know model type "snd" without any snd_hf name having been touched.
    folder = os.path.join(os.path.dirname(snd_hf.__file__), "assets", "default")
    script = _REGISTRATION_CHECK.format(first=order[0], second=order[1], folder=folder)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    light, loaded = result.stdout.split()
    assert loaded == "SnDModel" and (light == "True" or order[0] != "import snd_hf")


def test_light_options_name_the_defaults_of_their_owners():
    # snd_hf.commands writes out defaults that heavy modules own, so that --help needs no torch.
    from dataclasses import asdict

    from snd_hf.commands import evaluate, extract, field
    from snd_hf.eval.protocol import RESIZE_PROTOCOLS
    from snd_hf.extract import DTYPES
    from snd_hf.eval.datasets import TASKS
    from snd_hf.eval.suite import PRESETS
    from snd_hf.fields.fit import FitConfig
    from snd_hf.fields.segment import HIGHLIGHT_RATIO, MAX_ROUGHNESS, MAX_SPECULAR_SCALE, METHODS, SIMILARITY

    assert evaluate.TASKS == TASKS and set(evaluate.PRESET_NAMES) == set(PRESETS)
    assert field.FIT_DEFAULTS == {name: asdict(FitConfig())[name] for name in field.FIT_DEFAULTS}
    assert (field.SIMILARITY, field.HIGHLIGHT_RATIO) == (SIMILARITY, HIGHLIGHT_RATIO)
    assert (field.MAX_SPECULAR_SCALE, field.MAX_ROUGHNESS, field.METHODS) == (MAX_SPECULAR_SCALE, MAX_ROUGHNESS, METHODS)
    assert tuple(extract.DTYPE_NAMES) == tuple(DTYPES) and tuple(evaluate.RESIZE_PROTOCOLS) == tuple(RESIZE_PROTOCOLS)
