"""The one error type of checkpoint loading, and how its messages list keys."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the expected keys and shapes."""


MAX_LISTED = 20  # keys named per category in an error message


def listing(items: list[str]) -> str:
    """`items` joined for a message, the first `MAX_LISTED` of them and a count of the rest."""
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")
