"""HTTP API tests run against ``stack`` (tests/live.py): the real service over real NATS
and PostgreSQL. Clients per role, made once per module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from events import ApiRole

from http_support import sign_in
from live import LiveStack


@pytest.fixture(scope="module")
def admin(stack: LiveStack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


@pytest.fixture(scope="module")
def viewer(stack: LiveStack) -> Iterator[httpx.Client]:
    with stack.client(stack.new_key(ApiRole.VIEWER)) as client:
        yield client


@pytest.fixture(scope="module")
def ingest(stack: LiveStack) -> Iterator[httpx.Client]:
    with stack.client(stack.new_key(ApiRole.INGEST)) as client:
        yield client


@pytest.fixture(scope="module")
def browser(stack: LiveStack) -> Iterator[httpx.Client]:
    """A signed-in browser session as the admin (a cookie, no key header)."""
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        sign_in(client, stack.admin_key)
        yield client


@pytest.fixture
def user() -> str:
    """A user id no other test uses."""
    return f"u-{uuid.uuid4().hex[:10]}"
