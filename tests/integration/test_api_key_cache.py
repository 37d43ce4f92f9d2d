"""The HTTP service's cache of live API keys, on a real PostgreSQL: a key found once is not
looked up again, and every key is forgotten when a revocation is notified (by the
projection, or by a rebuild's swap), when one is notified while a lookup runs, when the
listening connection is lost, and when it stops answering."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from events import ApiRole
from projections.api_keys import KEYS_CHANGED, ApiKey, ApiKeysProjection
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


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


@pytest.fixture
async def cache(database_url: str) -> AsyncIterator[KeyCache]:
    cache = KeyCache(database_url)
    cache.start()
    await until(lambda: cache.trusted)
    try:
        yield cache
    finally:
        await cache.stop()


async def remembered(cache: KeyCache) -> Lookups:
    """Lookups that found the key once: the cache now keeps it."""
    lookups = Lookups()
    assert await cache.find("hash", lookups) == KEY
    return lookups


async def until_looked_up_again(cache: KeyCache, lookups: Lookups, calls: int) -> None:
    async with asyncio.timeout(10):
        while lookups.calls == calls:
            await cache.find("hash", lookups)
            await asyncio.sleep(0.01)


async def test_a_found_key_is_remembered_until_a_revocation_is_notified(
    cache: KeyCache, database_url: str
) -> None:
    listener = cache.backend_pid
    lookups = await remembered(cache)
    assert await cache.find("hash", lookups) == KEY
    assert lookups.calls == 1
    async with await connect(database_url) as conn:
        await conn.execute(f"NOTIFY {KEYS_CHANGED}")
    await until_looked_up_again(cache, lookups, 1)
    assert lookups.calls == 2
    assert (cache.backend_pid, cache.trusted) == (listener, True)  # told, not reconnected


async def test_a_rebuilds_swap_makes_every_key_forgotten(
    cache: KeyCache, database_url: str
) -> None:
    """The version a swap makes live may hold a revocation the old one had not applied."""
    listener = cache.backend_pid
    lookups = await remembered(cache)
    async with await connect(database_url) as conn, conn.transaction():
        await ApiKeysProjection().went_live(conn, 2, after_seq=0)
    await until_looked_up_again(cache, lookups, 1)
    assert cache.backend_pid == listener


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
    listener = cache.backend_pid
    lookups = await remembered(cache)
    async with await connect(database_url) as conn:
        await conn.execute("SELECT pg_terminate_backend(%s)", (listener,))
    await until(lambda: cache.backend_pid not in (None, listener) and cache.trusted)
    await cache.find("hash", lookups)
    assert lookups.calls == 2


async def test_a_listening_connection_that_stops_answering_is_not_trusted(
    cache: KeyCache,
) -> None:
    """As after a failover or a partition, where a notification could be lost unnoticed:
    its backend stopped (SIGSTOP), the cache looks every key up within TRUST_SECONDS."""
    listener = cache.backend_pid
    assert listener is not None
    lookups = await remembered(cache)
    os.kill(listener, signal.SIGSTOP)
    try:
        await until(lambda: not cache.trusted)
        await cache.find("hash", lookups)
        assert lookups.calls == 2
    finally:
        os.kill(listener, signal.SIGCONT)
    await until(lambda: cache.trusted)  # a new connection (or the old one again)
