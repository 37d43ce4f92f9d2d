"""What the console's browser tests share: signing in through the form, recording usage
through the API, and waiting until the projections have applied it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from playwright.sync_api import Page, expect

__all__ = ["USAGE_PROJECTIONS", "Pages", "csrf", "record", "sign_in", "unique", "wait_applied"]

Pages = Callable[..., Page]
"""The ``pages`` fixture: ``pages(key=None, **context_options)`` -> a new page."""

USAGE_PROJECTIONS = ("spend", "history", "reports", "alerts")
"""The projections that read usage events."""


def unique(prefix: str) -> str:
    """A user, project or policy id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def sign_in(page: Page, key: str) -> None:
    page.goto("/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def csrf(page: Page) -> str:
    """The session's CSRF token, as the page's <meta> carries it."""
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token
    return token


def record(http: httpx.Client, user_id: str, **fields: Any) -> int:
    """Post one call (gpt-4o, 1000 in / 500 out unless ``fields`` say otherwise) through
    the API as a host app would; its stream sequence."""
    body = {
        "model": "gpt-4o",
        "provider": "openai",
        "input_tokens": 1000,
        "output_tokens": 500,
        "user_id": user_id,
        **fields,
    }
    answer = http.post("/api/v1/usage", json=body)
    assert answer.status_code == 201, answer.text
    seq: int = answer.json()["stream_seq"]
    return seq


def wait_applied(http: httpx.Client, seq: int, within: float = 30) -> None:
    """Until every projection reading usage has applied the log up to ``seq``."""
    deadline = time.monotonic() + within
    while True:
        status = {p["name"]: p["checkpoint"] for p in http.get("/api/v1/projections").json()}
        if all(status.get(name, 0) >= seq for name in USAGE_PROJECTIONS):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"projections did not apply seq {seq} within {within}s: {status}")
        time.sleep(0.05)
