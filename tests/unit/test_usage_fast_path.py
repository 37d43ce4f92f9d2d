"""What ``services.api.usage_fast_path`` takes and what it hands to the app: a valid post
with a key in a header is answered by the fast path itself (here 401: no key is live);
every other request reaches the app unchanged, its body replayed byte for byte. (That
its answers are the route's, byte for byte, is tests/api/test_http_ingest.py's.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.datastructures import State
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from budget.config import Settings
from services.api.limits import KeyLimits
from services.api.routes import ingest
from services.api.usage_fast_path import PATH, UsageFastPath

LIMIT = 1000
CALL = json.dumps({"model": "gpt-4o", "provider": "openai", "input_tokens": 10}).encode()
KEY = {"Authorization": "Bearer bm_not_a_live_key", "Content-Type": "application/json"}


class App:
    """The app behind the fast path: answers 299 and keeps what reached it."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.received.append((scope["path"], body))
        await Response(b"the app", 299)(scope, receive, send)


async def _no_live_key(key_hash: str, lookup: Callable[[], Any]) -> None:
    return None


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
async def http(app: App) -> AsyncIterator[httpx.AsyncClient]:
    state = State()
    state.services = SimpleNamespace(key_cache=SimpleNamespace(find=_no_live_key))
    state.key_limits = KeyLimits(Settings())
    (route,) = (r for r in ingest.router.routes if getattr(r, "endpoint", None) is ingest.record)
    fast = UsageFastPath(app, state=state, route=route, limit=LIMIT)
    transport = httpx.ASGITransport(app=fast)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


async def test_a_valid_post_with_a_key_is_answered_by_the_fast_path(
    app: App, http: httpx.AsyncClient
) -> None:
    answer = await http.post(PATH, content=CALL, headers=KEY)
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"].startswith("send a live API key")
    assert app.received == []


async def _chunks() -> AsyncIterator[bytes]:
    yield CALL


HANDED_OVER: dict[str, tuple[str, dict[str, str], Any]] = {
    "no key": (PATH, {"Content-Type": "application/json"}, CALL),
    "a cookie": (PATH, {**KEY, "Cookie": "budget_session=x"}, CALL),
    "a query string": (f"{PATH}?dry_run=1", KEY, CALL),
    "another media type": (PATH, {**KEY, "Content-Type": "application/jsonl"}, CALL),
    "an unknown length": (PATH, KEY, None),  # chunked
    "a body over the limit": (PATH, KEY, CALL[:-1] + b', "tags": {"x": "' + b"y" * LIMIT + b'"}}'),
    "a NUL escape": (PATH, KEY, CALL.replace(b'"openai"', b'"open\\u0000ai"')),
    "not a call": (PATH, KEY, b'{"model": "gpt-4o"}'),
    "not JSON": (PATH, KEY, b'{"model": '),
    "JSON nested past the parser's depth": (PATH, KEY, b"[" * 100_000),
    "another route": ("/api/v1/usage/batch", KEY, CALL),
}


@pytest.mark.parametrize("case", HANDED_OVER)
async def test_anything_else_reaches_the_app_with_its_body(
    case: str, app: App, http: httpx.AsyncClient
) -> None:
    target, headers, body = HANDED_OVER[case]
    content = _chunks() if body is None else body
    answer = await http.post(target, content=content, headers=headers)
    assert (answer.status_code, answer.content) == (299, b"the app")
    assert app.received == [(target.partition("?")[0], CALL if body is None else body)]
