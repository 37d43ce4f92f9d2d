"""The live alert feed (``/api/v1/alerts/stream``) stays open while PostgreSQL is down and
delivers what arrives once it is back (real embedded PostgreSQL, stopped and started)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import psycopg
import pytest

from projections.database_queries import DatabaseQueries
from projections.engine.projection import Connection
from projections.migrate import migrate
from services.api.context import ApiServices
from services.api.routes import alerts as alert_routes
from services.api.routes.alerts import _feed
from services.embedded import EmbeddedPostgres

from support import wait_for

T = TypeVar("T")


class _OpenRequest:
    """A client that stays connected and resumes from nothing."""

    headers: dict[str, str] = {}

    async def is_disconnected(self) -> bool:
        return False


class _CountedReads(DatabaseQueries):
    reads = 0

    async def read(self, query: Callable[[Connection], Awaitable[T]]) -> T:
        self.reads += 1
        return await super().read(query)


async def _still_reading(request: object, reader: object) -> bool:
    return True  # the reader's key is live (its recheck: tests/api/test_http_alerts.py)


async def test_an_open_feed_outlives_the_database_being_down(
    embedded_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = embedded_postgres.url
    migrate(url)
    queries = _CountedReads(url, connections=2)
    api = cast(ApiServices, SimpleNamespace(database=queries))
    monkeypatch.setattr(alert_routes, "_still_reading", _still_reading)
    reader = cast(Any, None)
    feed = cast(AsyncGenerator[bytes, None], _feed(cast(Any, _OpenRequest()), api, reader))
    assert await anext(feed) == b": connected\n\n"
    following = asyncio.ensure_future(anext(feed))
    try:
        await asyncio.to_thread(embedded_postgres.stop)
        polled_before = queries.reads

        async def polled_while_down() -> bool:
            """the feed polled twice with PostgreSQL down"""
            return queries.reads >= polled_before + 2 or following.done()

        await wait_for(polled_while_down)
        await asyncio.to_thread(embedded_postgres.start)
        assert not following.done(), f"the feed ended: {following}"
        alert_id = uuid.uuid4()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO alert_feed (alert_id, payload) VALUES (%s, %s)",
                (alert_id, json.dumps({"alert_id": str(alert_id)})),
            )

        delivered = await asyncio.wait_for(following, timeout=10)

        assert delivered.startswith(f"id: {alert_id}\nevent: alert\n".encode())
    finally:
        following.cancel()
        await feed.aclose()
        await queries.close()
