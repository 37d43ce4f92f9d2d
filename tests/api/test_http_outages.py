"""With its servers unreachable the HTTP service still answers every request, with a 503
that says which server, and goes on: nothing raises out of a request."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from itsdangerous import TimestampSigner

from budget.config import Settings
from services.api.app import create_app
from services.api.context import ApiServices


@pytest.fixture
async def unreachable(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        nats_url="nats://127.0.0.1:1",
        database_url="postgresql://postgres@127.0.0.1:1/budget",
        spool_dir=tmp_path / "spool",
        data_dir=tmp_path,
    )
    async with ApiServices.open(settings) as opened:
        app = create_app(settings, session_secret="test", services=opened)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


async def test_unreachable_servers_are_503s(unreachable: httpx.AsyncClient) -> None:
    assert (await unreachable.get("/healthz")).status_code == 200
    ready = await unreachable.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"ready": False, "checks": {"nats": False, "postgresql": False}}
    for _ in range(3):  # again and again: the service goes on
        answer = await unreachable.get(
            "/api/v1/policies", headers={"Authorization": "Bearer bmk_x_y"}
        )
        assert answer.status_code == 503
        assert answer.json()["detail"] == "the database is unreachable; retry shortly"
        assert answer.headers["content-type"] == "application/problem+json"


async def test_a_console_page_says_so_in_a_page(unreachable: httpx.AsyncClient) -> None:
    # A signed-in browser: its cookie names a session, which is looked up in the database.
    payload = base64.b64encode(json.dumps({"sid": "some-session"}).encode())
    cookie = TimestampSigner("test").sign(payload).decode()
    answer = await unreachable.get("/", headers={"Cookie": f"budget_session={cookie}"})
    assert answer.status_code == 503
    assert answer.headers["content-type"].startswith("text/html")
    assert "the database is unreachable" in answer.text
