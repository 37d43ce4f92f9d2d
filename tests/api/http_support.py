"""Helpers the HTTP API tests share."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import httpx
import psycopg

from live import LiveStack

__all__ = [
    "call",
    "csrf_token",
    "eventually",
    "posted_at_once",
    "sign_in",
    "spend_locked",
    "waiting_on_spend",
]

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
        # At 10 probes/s, half of what one API key may ask sustained (caller_query_rate):
        # polling faster drained the key's burst, and the test's next request was a 429.
        time.sleep(0.1)


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


async def posted_at_once(stack: LiveStack, path: str, bodies: list[dict[str, object]]) -> list[int]:
    """Every body POSTed to ``path`` at the same time, as the admin; the statuses, in order."""
    headers = {"Authorization": f"Bearer {stack.admin_key}"}
    async with httpx.AsyncClient(base_url=stack.base_url, headers=headers, timeout=60) as http:
        answers = await asyncio.gather(*(http.post(path, json=body) for body in bodies))
    return [answer.status_code for answer in answers]


def sign_in(browser: httpx.Client, key: str) -> None:
    """As a browser does: the form's CSRF token, then the key; a session cookie results."""
    token = csrf_token(browser.get("/login").text)
    signed_in = browser.post("/login", data={"key": key, "csrf_token": token, "next": "/"})
    assert signed_in.status_code == 303 and "budget_session" in browser.cookies, signed_in.text


def csrf_token(page: str) -> str:
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token, page
    return token[1]


@contextlib.contextmanager
def spend_locked(stack: LiveStack) -> Iterator[psycopg.Connection]:
    """The spend table locked, so reads of it wait (in flight) until the lock is let go
    (``rollback()``, or the block's end)."""
    with psycopg.connect(stack.settings.database_url) as conn:
        conn.execute("LOCK TABLE spend_buckets IN ACCESS EXCLUSIVE MODE")
        try:
            yield conn
        finally:
            conn.rollback()


def waiting_on_spend(stack: LiveStack) -> int:
    """How many sessions wait for the spend table's lock."""
    with psycopg.connect(stack.settings.database_url) as probe:
        row = probe.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
            ("spend_buckets",),
        ).fetchone()
    return int(row[0]) if row else 0
