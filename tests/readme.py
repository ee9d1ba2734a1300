"""README.md as data: its fenced code blocks and the shell commands in them.

Used by tests/test_readme.py (which runs them) and tests/test_packaging.py (which checks that CI
installs what README's install line says). Standard library only.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
CI_SCRIPT = README.parent / ".ci" / "run"

# First words (after VAR=value assignments) that make an inline `code span` a shell command.
COMMAND_WORDS = ("snd", "python", "accelerate", "pip")

_FENCE = re.compile(r"^```(\w*)\s*$")
_INLINE = re.compile(r"`([^`\n]+)`")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block.

    Attributes:
        language: the fence's info string (``bash``, ``python``, ...; empty if none).
        code: the text between the fences.
        line: line number of the opening fence (1-based).
        heading: the nearest Markdown heading above it.
    """

    language: str
    code: str
    line: int
    heading: str


def code_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, in order."""
    blocks, heading, opened, lines = [], "", None, []
    for number, line in enumerate(text.splitlines(), start=1):
        fence = _FENCE.match(line)
        if opened is None:
            if fence:
                opened, lines = (fence.group(1), number, heading), []
            elif line.startswith("#"):
                heading = line.lstrip("#").strip()
        elif line.startswith("```"):
            language, start, block_heading = opened
            blocks.append(Block(language, "\n".join(lines) + "\n", start, block_heading))
            opened = None
        else:
            lines.append(line)
    if opened is not None:
        raise ValueError(f"README: the code block opened on line {opened[1]} is never closed")
    return blocks


def prose(text: str) -> str:
    """The text outside fenced blocks."""
    return re.sub(r"^```\w*\s*$.*?^```\s*$", "", text, flags=re.S | re.M)


def shell_commands(code: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comment-only lines dropped, and
    ``a && b`` split into ``a`` and ``b`` (each keeps its trailing comment, which the shell ignores)."""
    joined = re.sub(r"\\\n\s*", "", code)
    commands = []
    for line in joined.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        commands += [part.strip() for part in re.split(r"\s&&\s", line)]
    return commands


def inline_commands(text: str) -> list[str]:
    """Inline code spans of the prose that are shell commands (first word in ``COMMAND_WORDS``)."""
    found = []
    for span in _INLINE.findall(prose(text)):
        words = span.split()
        while words and _ASSIGNMENT.match(words[0]):
            words = words[1:]
        if words and words[0] in COMMAND_WORDS:
            found.append(span.strip())
    return found


def words(command: str) -> list[str]:
    """The shell words of a command, comments dropped."""
    return shlex.split(command, comments=True)


def is_install(command: str) -> bool:
    return words(command)[:2] == ["pip", "install"]


def readme_text() -> str:
    return README.read_text()
