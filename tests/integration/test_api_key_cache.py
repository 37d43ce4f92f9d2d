"""The HTTP service's cache of live API keys, on a real PostgreSQL: a key found once is not
looked up again, and every key is forgotten when a revocation is notified, when one is
notified while a lookup runs, and when the listening connection is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from events import ApiRole
from projections.api_keys import KEYS_CHANGED, ApiKey
from projections.db import connect
from services.api.key_cache import KeyCache

KEY = ApiKey("k1", "cached", ApiRole.VIEWER, None, datetime(2026, 12, 1, tzinfo=UTC), None)


class Lookups:
    """A lookup that counts its calls (and runs ``during`` in each, when set)."""

    def __init__(self) -> None:
        self.calls = 0
        self.during: Callable[[], None] | None = None

    async def __call__(self) -> ApiKey:
        self.calls += 1
        if self.during is not None:
            self.during()
        return KEY


@pytest.fixture
async def cache(database_url: str) -> AsyncIterator[KeyCache]:
    cache = KeyCache(database_url)
    cache.start()
    await asyncio.wait_for(cache.listening.wait(), 10)
    try:
        yield cache
    finally:
        await cache.stop()


async def until_looked_up_again(cache: KeyCache, lookups: Lookups, calls: int) -> None:
    async with asyncio.timeout(10):
        while lookups.calls == calls:
            await cache.find("hash", lookups)
            await asyncio.sleep(0.01)


async def test_a_found_key_is_remembered_until_a_revocation_is_notified(
    cache: KeyCache, database_url: str
) -> None:
    lookups = Lookups()
    assert await cache.find("hash", lookups) == KEY
    assert await cache.find("hash", lookups) == KEY
    assert lookups.calls == 1
    async with await connect(database_url) as conn:
        await conn.execute(f"NOTIFY {KEYS_CHANGED}")
    await until_looked_up_again(cache, lookups, 1)
    assert lookups.calls == 2


async def test_a_revocation_heard_during_a_lookup_keeps_its_answer_out(cache: KeyCache) -> None:
    lookups = Lookups()
    lookups.during = cache.forget  # as if notified while PostgreSQL answered
    await cache.find("hash", lookups)
    lookups.during = None
    await cache.find("hash", lookups)
    assert lookups.calls == 2


async def test_nothing_is_kept_before_listening(database_url: str) -> None:
    cache = KeyCache(database_url)  # not started
    lookups = Lookups()
    await cache.find("hash", lookups)
    await cache.find("hash", lookups)
    assert lookups.calls == 2


async def test_a_lost_listening_connection_forgets_and_listens_again(
    cache: KeyCache, database_url: str
) -> None:
    lookups = Lookups()
    await cache.find("hash", lookups)
    listening = "SELECT pid FROM pg_stat_activity WHERE query = %s"
    async with await connect(database_url) as conn:

        async def listeners() -> set[int]:
            found = await conn.execute(listening, (f"LISTEN {KEYS_CHANGED}",))
            return {pid for (pid,) in await found.fetchall()}

        before = await listeners()
        assert before  # the cache's connection (and any other listener: all are cut)
        for pid in before:
            await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        async with asyncio.timeout(10):  # a new connection listens (after forgetting)
            while True:
                if await listeners() - before and cache.listening.is_set():
                    break
                await asyncio.sleep(0.05)
    await cache.find("hash", lookups)
    assert lookups.calls == 2
