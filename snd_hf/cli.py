"""The `snd` command line: `snd demo | extract | convert | synth | eval`.

Each subcommand's options live in a light module of :mod:`snd_hf.commands` (``add_arguments(parser)``,
importing neither torch nor transformers; optionally ``check(args)``, which checks the input files
named on the command line) and its work in the module that owns the feature (``run(args) -> int |
None``), imported only once the command line has parsed and passed ``check``: `snd --help`, `snd
--version`, every ``--help``, every argument error and a missing input file answer before torch
loads. Every ``--help`` shows the defaults.

Errors: the `snd` executable runs :func:`main` through :func:`run_with_errors`, so an expected
failure (a missing file, a bad value, an unreachable Hub, a file that is not a checkpoint, a
missing optional dependency) prints one line ``snd: error: MESSAGE (add --debug for the
traceback)`` on stderr and exits with status 2;
Ctrl-C prints ``interrupted`` and exits with 130, as shells expect. ``--debug`` anywhere on the
command line shows the full traceback instead. Any other exception is a bug and keeps its
traceback. :func:`main` itself raises, for callers in Python.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.metadata
import os
import re
import sys
from collections.abc import Callable
from typing import NamedTuple

DISTRIBUTION = "snd-hf"
DEBUG_FLAG = "--debug"
EXIT_USER_ERROR = 2  # argparse's status for a bad command line
EXIT_INTERRUPTED = 130  # 128 + SIGINT


class Command(NamedTuple):
    """One `snd` subcommand: where its options and its work live, and its one-line help."""

    arguments: str  # light module with add_arguments(parser)
    runner: str  # module with run(args), imported only when the command runs
    help: str


# Register a command with one line.
COMMANDS: dict[str, Command] = {
    "convert": Command("snd_hf.commands.convert", "snd_hf.convert", "convert original DINOv2/SnD .pth <-> native snd-hf directory"),
    "demo": Command("snd_hf.commands.demo", "snd_hf.demo", "feature extraction demo on packaged images (offline: embedded checkpoint)"),
    "extract": Command("snd_hf.commands.extract", "snd_hf.extract", "dense SnD features of images: safetensors + PCA pictures"),
    "synth": Command("snd_hf.commands.synth", "snd_hf.data.synthetic", "generate procedural indoor scenes in the ScanNet++ layout"),
    "eval": Command(
        "snd_hf.commands.evaluate", "snd_hf.eval.suite",
        "compare models with frozen-feature probes (depth, normals, segmentation, correspondence)",
    ),
    "field": Command(
        "snd_hf.commands.field", "snd_hf.fields.cli",
        "disentangled 3D feature fields: fit a scene, click-segment in 3D, edit reflections",
    ),
}

# Failures of the user's input or environment, not of snd-hf: shown as one line. OSError covers
# missing files, permissions and huggingface_hub's errors (offline, not found, HTTP status: all
# OSError); ValueError covers argument checks and CheckpointError. A Hub that cannot be reached
# (connection refused, timeout) raises the Hub client's HTTP error, added by `_hub_http_errors`.
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError)


def _hub_http_errors() -> tuple[type[BaseException], ...]:
    """The HTTP error of the Hub client's HTTP library, whichever it is, once the client is loaded:
    not imported before (a third of `snd --version`'s time), since without the client none was raised."""
    if "huggingface_hub.utils" not in sys.modules:
        return ()
    from huggingface_hub.utils import httpx

    return (httpx.HTTPError,)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` after every option that has a default and does not state it itself.

    Unlike argparse's own formatter it leaves out ``None`` (no default), the ``False`` of on/off
    flags and required arguments, and never repeats a default the help text already names.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if (
            "default" in help_text.lower()
            or default in (None, argparse.SUPPRESS)
            or action.required
            or action.nargs == 0  # store_true / store_false / help / version
        ):
            return help_text
        return f"{help_text} (default: %(default)s)".strip()


class SuggestingParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors for a mistyped command or long option name the closest one.

    ``snd extarct`` answers ``argument COMMAND: invalid choice: 'extarct'; did you mean 'extract'?``
    and ``snd extract --modle m`` answers ``unrecognized argument '--modle'; did you mean '--model'?``
    (argparse suggests nothing before Python 3.14, and a mistyped required option otherwise surfaces
    as "the following arguments are required"). Words without a close match (``difflib``) are left
    to argparse's own errors. Subparsers inherit the class, so every level of `snd` checks its words.
    """

    def parse_known_args(self, args=None, namespace=None):  # argparse calls it once per (sub)parser
        words = sys.argv[1:] if args is None else list(args)
        self._suggest(words[: words.index("--")] if "--" in words else words)
        return super().parse_known_args(args, namespace)

    def _suggest(self, words: list[str]) -> None:
        """``self.error`` (exits) naming the closest command or option to a word that is neither."""
        commands = next((action for action in self._actions if isinstance(action, argparse._SubParsersAction)), None)
        if commands is not None:  # a parser with subcommands: its own options come before the command
            position = next((i for i, word in enumerate(words) if not word.startswith("-")), len(words))
            if position < len(words) and words[position] not in commands.choices:
                self._error_with_match(
                    words[position], list(commands.choices),
                    lambda match: f"argument {commands.metavar or commands.dest}: invalid choice: {words[position]!r}; did you mean "
                    f"{match!r}? (choose from {', '.join(commands.choices)})",
                )  # fmt: skip
            words = words[:position]
        options = list(self._option_string_actions)
        for word in words:
            option = word.partition("=")[0]
            if option.startswith("--") and len(option) > 2 and not any(known.startswith(option) for known in options):
                self._error_with_match(option, options, lambda match: f"unrecognized argument {option!r}; did you mean {match!r}?")

    def _error_with_match(self, word: str, candidates: list[str], message: Callable[[str], str]) -> None:
        matches = difflib.get_close_matches(word, candidates, n=1)
        if matches:
            self.error(message(matches[0]))


def version() -> str:
    """The installed snd-hf version (package metadata, from pyproject.toml)."""
    return importlib.metadata.version(DISTRIBUTION)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = SuggestingParser(
        prog="snd", description="Splat and Distill: 3D-aware DINOv2 features.", formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show the full traceback of an error (also after the command)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=command.help, description=command.help, formatter_class=DefaultsHelpFormatter)
        subparser.set_defaults(_runner=command.runner)
        if _command_of(argv) == name:  # only the chosen command's options are read
            importlib.import_module(command.arguments).add_arguments(subparser)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not a top-level option)."""
    words = [word for word in argv if word != DEBUG_FLAG]
    return words[0] if words else None


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; errors propagate (the executable is :func:`console_main`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    check = getattr(importlib.import_module(COMMANDS[args.command].arguments), "check", None)
    if check is not None:  # input files named on the command line, before the work's imports (torch)
        check(args)
    return importlib.import_module(args._runner).run(args) or 0


def console_main(argv: list[str] | None = None) -> int:
    """The `snd` executable: :func:`main` with one-line errors (see the module docstring)."""
    return run_with_errors(main, argv, prog="snd")


def run_with_errors(
    entry: Callable[[list[str]], int | None],
    argv: list[str] | None = None,
    prog: str | None = None,
    errors: tuple[type[BaseException] | str, ...] = USER_ERRORS,
) -> int:
    """Run ``entry(argv)`` with expected errors shown as one line on stderr.

    ``--debug`` is taken out of ``argv`` wherever it stands and lets every exception through with
    its traceback. Without it, an error of a kind in ``USER_ERRORS`` (or a missing optional
    dependency of snd-hf, or the Hub client's HTTP error) prints ``{prog}: error: {message} (add --debug for the
    traceback)`` as one line (the message's closing period dropped) and returns 2, and Ctrl-C
    prints ``{prog}: interrupted`` and returns 130. Anything else is a bug: it propagates, traceback
    and all. Use it as the ``__main__`` of a script::

        sys.exit(run_with_errors(main, prog="train.py"))

    Args:
        entry: the real main, taking the argument list (without the program name).
        argv: the arguments; ``sys.argv[1:]`` when None.
        prog: name printed before the message; the script's file name when None.
        errors: the exception types that are the user's to fix (``USER_ERRORS`` by default); a
            dotted name (``"snd_hf.training.guards.NonFiniteError"``) stands for a class of a module
            that ``entry`` imports only when it needs it (until then, nothing can raise it).

    Returns:
        ``entry``'s status (None counts as 0), or 2 / 130 as above.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or os.path.basename(sys.argv[0])
    debug = DEBUG_FLAG in argv
    argv = [word for word in argv if word != DEBUG_FLAG]
    if debug:
        return entry(argv) or 0
    try:
        return entry(argv) or 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ModuleNotFoundError as error:
        extra = _extra_providing(error.name or "")
        if extra is None:
            raise  # an import the package does not declare: a bug
        print(f"{prog}: error: {error}: install it with pip install '{DISTRIBUTION}[{extra}]'", file=sys.stderr)
        return EXIT_USER_ERROR
    except (*_loaded(errors), *_hub_http_errors()) as error:
        # The hint follows the message as its own clause, so a message's closing period is dropped.
        print(f"{prog}: error: {one_line(error).removesuffix('.')} (add {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        return EXIT_USER_ERROR


def _loaded(errors: tuple[type[BaseException] | str, ...]) -> tuple[type[BaseException], ...]:
    """The exception classes of ``errors``, a dotted name resolved when its module is imported, else left out."""
    types = []
    for error in errors:
        if isinstance(error, str):
            module, _, name = error.rpartition(".")
            if module in sys.modules:
                types.append(getattr(sys.modules[module], name))
        else:
            types.append(error)
    return tuple(types)


def one_line(error: BaseException) -> str:
    """The error's message on one line (whitespace runs collapsed), or its type when it has none."""
    return " ".join(str(error).split()) or type(error).__name__


def _extra_providing(module: str) -> str | None:
    """The optional-dependency group (``[eval]``...) of snd-hf whose requirement provides ``module``."""
    top = _normalize(module.partition(".")[0])
    for requirement in importlib.metadata.requires(DISTRIBUTION) or ():
        name, _, marker = requirement.partition(";")
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if extra and _normalize(re.split(r"[\s\[<>=!~;]", name.strip(), maxsplit=1)[0]) == top:
            return extra.group(1)
    return None


def _normalize(name: str) -> str:
    """PEP 503 name normalisation (``PyYAML`` and ``pyyaml``, ``a_b`` and ``a-b`` are one name)."""
    return re.sub(r"[-_.]+", "-", name).lower()


if __name__ == "__main__":
    sys.exit(console_main())
