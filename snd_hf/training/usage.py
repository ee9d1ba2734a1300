"""``python training/train.py --help``: every :class:`TrainingConfig` key with its type, default and meaning.

The meanings are the dataclass's own comments (the comment lines above a field and the comment
after it), read from its source, so the help can never drift from the config: a new key with a
comment appears in ``--help`` as it is.
"""

from __future__ import annotations

import inspect
import io
import re
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import CONFIG_DIR, DEFAULT_CONFIG, TrainingConfig

_FIELD = re.compile(r"^    (\w+)\s*:\s*(.+?)\s*=")  # "    name: annotation = default" in the class body
_SECTION = re.compile(r"^\s*#\s*-+\s*(.*?)\s*-*\s*$")  # "# --- data ----"


@dataclass
class KeyHelp:
    name: str
    annotation: str  # as written in the source
    meaning: str
    section: str


def config_keys_help() -> list[KeyHelp]:
    """Every field of :class:`TrainingConfig`, in order, with the comments that document it."""
    source = textwrap.dedent(inspect.getsource(TrainingConfig))
    comments: dict[int, str] = {}  # line number -> comment text
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.add(token.start[0])
    fields = set(TrainingConfig.keys())
    found, section, above = [], "", []
    for number, line in enumerate(source.splitlines(), start=1):
        match = _FIELD.match(line)
        if number in comments and number not in code_lines:  # a comment on its own line
            header = _SECTION.match(line)
            if header and line.strip().startswith("# -"):
                section, above = header.group(1), []
            else:
                above.append(comments[number])
            continue
        if match and match.group(1) in fields:
            trailing = [comments[number]] if number in comments else []
            found.append(KeyHelp(match.group(1), match.group(2), " ".join(above + trailing), section))
        above = []
    return found


def _kind(annotation: str) -> str:
    """``Literal["a", "b"]`` → ``a|b``; other annotations as written."""
    return re.sub(r'Literal\[(.*?)\]', lambda m: "|".join(re.findall(r'"([^"]*)"', m.group(1))), annotation)


def _shown(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def training_help(prog: str = "training/train.py", description: str = "", config_dir: Path = CONFIG_DIR) -> str:
    """The text of ``--help``: usage, how keys are set, then every key grouped by section."""
    built_in = TrainingConfig()
    defaults = TrainingConfig.from_args([], config_dir=config_dir)
    shipped = ", ".join(sorted(p.stem for p in config_dir.glob("*.yaml")))
    lines = [
        f"usage: python {prog} [--config NAME_OR_PATH] [--KEY VALUE ...]",
        f"       accelerate launch [LAUNCH OPTIONS] {prog} [--config NAME_OR_PATH] [--KEY VALUE ...]",
        "",
        *([description, ""] if description else []),
        "Every key below can be set in a YAML file (--config: a path, or one of the shipped configs: "
        f"{shipped}) or as --KEY VALUE / --KEY=VALUE (a bare --FLAG means true; lists as [a,b]; null for none). "
        f"Defaults are those of a plain run (the default config, {DEFAULT_CONFIG}; its own values are marked).",
        "",
        "  -h, --help  show this help and exit",
    ]
    wrap = textwrap.TextWrapper(width=100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    section = None
    for key in config_keys_help():
        if key.section != section:
            section = key.section
            lines += ["", f"{section}:"]
        value, original = getattr(defaults, key.name), getattr(built_in, key.name)
        note = f"  ({DEFAULT_CONFIG}; built in: {_shown(original)})" if value != original else ""
        lines.append(f"  --{key.name} ({_kind(key.annotation)}), default: {_shown(value)}{note}")
        if key.meaning:
            lines.extend(wrap.wrap(key.meaning))
    return "\n".join(lines) + "\n"
