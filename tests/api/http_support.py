"""Helpers the HTTP API tests share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["call", "eventually"]

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], within: float = 30.0, what: str = "") -> T:
    """``probe()``'s first truthy result, polling until ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what or probe}")
        time.sleep(0.05)


def call(user_id: str, **fields: object) -> dict[str, object]:
    """A usage post body: gpt-4o, 1000 in / 500 out ($0.0075)."""
    return {
        "model": "gpt-4o",
        "provider": "openai",
        "input_tokens": 1000,
        "output_tokens": 500,
        "user_id": user_id,
        **fields,
    }
