"""NUL characters (U+0000) in JSON: PostgreSQL stores none (in ``text`` or ``jsonb``), so
an event holding one would be refused by the projections that store that field and
counted by those that do not. Every event is judged here once, by its bytes: producers
refuse to publish it, consumers dead-letter it, the HTTP API answers 422.

The same for an unpaired surrogate escape (``\\udc00`` alone): Python's json reads it,
but no UTF-8 carries it, so such an event can neither be encoded again nor stored."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

__all__ = ["JSON_NUL", "nul_reason", "surrogate_reason"]

JSON_NUL = re.compile(rb"\x00|(?<!\\)(?:\\\\)*\\u0000", re.IGNORECASE)
"""A raw NUL, or the escape \\u0000 (not when its backslash is itself escaped: \\\\u0000
is the text "\\u0000")."""


def nul_reason(data: bytes) -> str | None:
    """Why the JSON ``data`` cannot be stored, naming the first field holding a NUL
    character; None when none does."""
    if b"\\u0000" not in data and b"\\U0000" not in data and b"\x00" not in data:
        return None  # the common case: one scan of the bytes
    if JSON_NUL.search(data) is None:
        return None
    try:
        where = _path(json.loads(data), _has_nul)
    except (ValueError, RecursionError):
        where = None
    return f"{where or 'a string'} holds a NUL character (U+0000), which cannot be stored"


def surrogate_reason(data: bytes) -> str | None:
    """Why the JSON ``data`` cannot be stored, naming the first field holding an unpaired
    surrogate; None when none does (or when it is no JSON: the decoder says so)."""
    if b"\\ud" not in data and b"\\uD" not in data:
        return None  # no escape of a surrogate at all: one scan of the bytes
    try:  # json joins a pair into its character: a surrogate left is unpaired
        where = _path(json.loads(data), _has_surrogate)
    except (ValueError, RecursionError):
        return None
    if where is None:
        return None
    return f"{where} holds an unpaired surrogate (\\ud800-\\udfff alone), which is no character"


def _has_nul(text: str) -> bool:
    return "\x00" in text


def _has_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _path(value: object, has: Callable[[str], bool], at: str = "") -> str | None:
    if isinstance(value, str):
        return at if has(value) else None
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        if isinstance(key, str) and has(key):
            return f"{at or 'the event'}: a name in it"
        found = _path(item, has, f"{at}.{key}" if at else str(key))
        if found is not None:
            return found
    return None
