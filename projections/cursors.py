"""Keyset cursors as clients see them: opaque URL-safe text (base64 of JSON, unpadded)."""

from __future__ import annotations

import base64
import json
from typing import Any

__all__ = ["decode_cursor", "encode_cursor"]


def encode_cursor(data: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Any:
    """What ``encode_cursor`` was given; ``ValueError`` when ``text`` is not such a cursor
    (a client's own text may be anything: nested too deep for the parser, too)."""
    try:
        return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, RecursionError):
        raise ValueError("not a cursor") from None
