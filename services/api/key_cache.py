"""The live API keys this process has seen, so a request need not ask PostgreSQL whose its
key is: the lookup was ~15-20 % of the API's CPU per request and a database round trip.

A revocation must still hold from the next request. The ``api_keys`` projection notifies
``KEYS_CHANGED`` in the transaction that applies one, which PostgreSQL delivers as that
commits; the cache listens on a connection of its own and forgets every key when told
(revocations are rare, and a forgotten key costs one lookup). The process that revoked a
key forgets at once, before it answers. While the cache is not listening (starting, or
its connection lost) it keeps nothing and every request asks PostgreSQL, as without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import psycopg

from projections.api_keys import KEYS_CHANGED, ApiKey
from projections.db import connect

__all__ = ["KeyCache"]

log = logging.getLogger("budget.api")
_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)
_PING_SECONDS = 30.0
"""How often an idle listening connection is checked, so a dead one is noticed."""


class KeyCache:
    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._keys: dict[str, ApiKey] = {}
        self._generation = 0
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        """Set while revocations are heard; only then are keys kept."""

    async def find(
        self, key_hash: str, lookup: Callable[[], Awaitable[ApiKey | None]]
    ) -> ApiKey | None:
        """The live key with ``key_hash``: remembered, or ``lookup()`` (kept if live)."""
        if not self.listening.is_set():
            return await lookup()
        known = self._keys.get(key_hash)
        if known is not None:
            return known
        generation = self._generation
        found = await lookup()
        # A revocation heard while the lookup ran may be of this very key: keep nothing.
        if found is not None and self.listening.is_set() and generation == self._generation:
            self._keys[key_hash] = found
        return found

    def forget(self) -> None:
        self._generation += 1
        self._keys.clear()

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="api-key-cache")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                async with await connect(self._database_url) as conn:
                    await conn.execute(f"LISTEN {KEYS_CHANGED}")
                    self._heard(True)
                    if failures:
                        log.info("API key cache: listening for revocations again")
                    failures = 0
                    while True:
                        async for _ in conn.notifies(timeout=_PING_SECONDS, stop_after=1):
                            self.forget()
                        await conn.execute("SELECT 1")
            except (psycopg.Error, OSError) as exc:
                # Once per outage. The type suffices: libpq's text may name the server.
                if not failures:
                    log.warning(
                        "API key cache: not listening for revocations (%s); every request"
                        " looks its key up until it is back",
                        type(exc).__name__,
                    )
            finally:
                self._heard(False)
            await asyncio.sleep(_RETRY_SECONDS[min(failures, len(_RETRY_SECONDS) - 1)])
            failures += 1

    def _heard(self, listening: bool) -> None:
        self.forget()
        if listening:
            self.listening.set()
        else:
            self.listening.clear()
