"""With its servers unreachable the HTTP service still answers every request, with a 503
that says which server, and goes on: nothing raises out of a request."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from itsdangerous import TimestampSigner

from budget.config import Settings
from events import BudgetPolicy, PolicySet, encode, headers_for
from events.envelope import utc_now
from projections.api_keys import ApiKeysProjection
from projections.db import connect
from projections.engine.checkpoints import ensure_projection
from projections.migrate import migrate
from services.api.app import create_app
from services.api.context import ApiServices
from services.api.keys import NewKey, new_key
from services.ops import nats_client, prepare
from services.worker import run_projection


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


async def stored_admin_key(database_url: str) -> NewKey:
    """An admin key stored straight in the ``api_keys`` table (no worker needed)."""
    key = new_key()
    async with await connect(database_url) as conn:
        await conn.execute(
            "INSERT INTO api_keys (key_id, key_hash, name, role, created_at)"
            " VALUES (%s, %s, 'ops', 'admin', now())",
            (key.key_id, key.key_hash),
        )
    return key


async def test_a_change_with_nats_away_is_a_503_without_the_url(
    pg_schema_url: str, tmp_path: Path
) -> None:
    """The database answers, NATS does not: a policy change is refused, and the NATS URL
    (with its password) appears nowhere in the answer."""
    migrate(pg_schema_url)
    async with await connect(pg_schema_url) as conn:
        await ensure_projection(conn, ApiKeysProjection())
    key = await stored_admin_key(pg_schema_url)
    settings = Settings(
        nats_url="nats://alice:S3cretPassw0rd@127.0.0.1:1",
        database_url=pg_schema_url,
        spool_dir=tmp_path / "spool",
        data_dir=tmp_path,
    )
    async with ApiServices.open(settings) as opened:
        app = create_app(settings, session_secret="test", services=opened)
        headers = {"Authorization": f"Bearer {key.key}"}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api", headers=headers
        ) as http:
            answers = [
                await http.put("/api/v1/policies/p1", json={"name": "p", "limit_amount": "1"}),
                await http.post("/api/v1/keys", json={"name": "k", "role": "viewer"}),
                await http.post("/api/v1/usage", json={"model": "gpt-4o", "provider": "openai"}),
            ]
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert "NATS" in answer.json()["detail"]
        assert "S3cretPassw0rd" not in answer.text


@contextlib.asynccontextmanager
async def api_without_workers(
    nats_url: str, database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str], Settings, ApiServices]]:
    """The HTTP service on real servers with no worker running, an admin key stored
    straight in the table: (client, admin headers, settings, services)."""
    settings = Settings(
        nats_url=nats_url,
        database_url=database_url,
        subject_prefix=f"t{secrets.token_hex(5)}",
        spool_dir=tmp_path / "spool",
        data_dir=tmp_path,
    )
    await prepare(nats_url, database_url, settings)
    admin = await stored_admin_key(database_url)
    async with ApiServices.open(settings) as opened:
        app = create_app(settings, session_secret="test", services=opened)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api"
        ) as http:
            yield http, {"Authorization": f"Bearer {admin.key}"}, settings, opened


async def test_a_key_not_in_force_in_time_is_handed_over_all_the_same(
    nats_url: str, pg_schema_url: str, tmp_path: Path
) -> None:
    """The api_keys worker is not running: the new key is stored but not applied. The
    answer is a 202 with the key (its only copy) and a Location that answers 200 once the
    worker has applied it; the key works from then on."""
    async with api_without_workers(nats_url, pg_schema_url, tmp_path) as (
        http,
        as_admin,
        settings,
        opened,
    ):
        opened.keys.apply_timeout = 0.5  # the worker is not running: no need to wait long
        answer = await http.post(
            "/api/v1/keys", json={"name": "late", "role": "viewer"}, headers=as_admin
        )
        assert answer.status_code == 202, answer.text
        made = answer.json()
        assert made["applied"] is False and made["key"].startswith(f"bmk_{made['key_id']}_")
        location = answer.headers["location"]
        assert location == f"/api/v1/keys/{made['key_id']}"
        assert (await http.get(location, headers=as_admin)).status_code == 404

        stop = asyncio.Event()
        async with nats_client(nats_url, settings) as nc:
            worker = asyncio.create_task(run_projection("api_keys", nc, settings, stop))
            try:
                async with asyncio.timeout(30):  # bounded, never asserted on
                    while (await http.get(location, headers=as_admin)).status_code != 200:
                        assert not worker.done(), worker
                        await asyncio.sleep(0.05)
            finally:
                stop.set()
                await worker
        as_new = {"Authorization": f"Bearer {made['key']}"}
        assert (await http.get("/api/v1/policies", headers=as_new)).status_code == 200


async def test_a_create_the_worker_is_too_far_behind_to_check_changes_nothing(
    nats_url: str, pg_schema_url: str, tmp_path: Path
) -> None:
    """A policy is on the log but the policies worker is not running: a create cannot tell
    whether its id exists, so it is a 503 that says nothing changed and which worker is
    behind (not the 504 of a change stored but not applied), and nothing is published."""
    async with api_without_workers(nats_url, pg_schema_url, tmp_path) as (
        http,
        as_admin,
        settings,
        opened,
    ):
        earlier = BudgetPolicy(policy_id="earlier", name="earlier", limit_amount=Decimal(5))
        async with nats_client(nats_url, settings) as nc:
            js = nc.jetstream()
            event = PolicySet(occurred_at=utc_now(), policy=earlier)
            subject = settings.topology.event_subject(event.SUBJECT)
            stored = await js.publish(subject, encode(event), headers=headers_for(event))
            opened.manager.apply_timeout = 0.5
            policy = {"policy_id": "new", "name": "new", "limit_amount": "10"}
            answer = await http.post("/api/v1/policies", json=policy, headers=as_admin)
            assert answer.status_code == 503, answer.text
            detail = answer.json()["detail"]
            assert detail.startswith("nothing changed: the policies worker has not applied")
            stream = settings.topology.event_stream.name
            last = await js.get_last_msg(stream, subject, direct=True)
            assert last.seq == stored.seq  # the create published nothing
