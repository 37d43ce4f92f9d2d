"""Text from outside (a host app's ids, an alert's message, an error) made one printable
line before it reaches a terminal, a log line or a mail header."""

from __future__ import annotations

__all__ = ["one_line"]


def one_line(text: str) -> str:
    """``text`` with each line break and other unprintable character made a space, and
    runs of spaces made one: it can neither forge a line of its own nor send escape
    sequences to a terminal."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())
