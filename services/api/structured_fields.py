"""HTTP Structured Field Values (RFC 9651) that the API's answers carry in headers.

Only what is needed: a List of strings. A string of printable ASCII is an sf-string
(``"..."``); any other text a Display String (``%"..."``, its UTF-8 percent-encoded), the
RFC's way to carry Unicode in a header, which otherwise could hold none of it.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["string_list"]

_PRINTABLE = range(0x20, 0x7F)


def string_list(items: Iterable[str]) -> str:
    """``items`` as a Structured Field List whose members are strings, in order."""
    return ", ".join(_member(item) for item in items)


def _member(text: str) -> str:
    if all(ord(c) in _PRINTABLE for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return '%"' + "".join(_display_char(c) for c in text) + '"'


def _display_char(char: str) -> str:
    """One character of a Display String: printable ASCII as itself (but ``%`` and ``"``),
    anything else as its UTF-8 bytes, each ``%`` and two lowercase hex digits."""
    if ord(char) in _PRINTABLE and char not in '%"':
        return char
    return "".join(f"%{byte:02x}" for byte in char.encode())
