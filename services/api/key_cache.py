"""The live API keys this process has seen, so a request need not ask PostgreSQL whose key
it carries: the lookup was ~15-20 % of the API's CPU per request and a database round trip.

A revocation must still hold from the next request. The ``api_keys`` projection notifies
``KEYS_CHANGED`` in the transaction that applies one (and in a rebuild's swap), which
PostgreSQL delivers as that commits; the cache listens on a connection of its own and
forgets every key when told (revocations are rare, and a forgotten key costs one lookup).
The process that revoked a key forgets at once, before it answers.

Keys are kept only while that connection has proved alive within ``TRUST_SECONDS`` (a
ping each second): a connection that died silently (a failover, a partition) could have
missed a notification, so after that long every request asks PostgreSQL again, as
without the cache, until a new connection listens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from projections.api_keys import KEYS_CHANGED, ApiKey
from projections.db import connect

__all__ = ["APPLICATION_NAME", "TRUST_SECONDS", "KeyCache"]

log = logging.getLogger("budget.api")
TRUST_SECONDS = 3.0
"""The longest a revocation can go unheard: keys are kept only while the listening
connection answered this recently."""
_PING_SECONDS = 1.0
_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)
APPLICATION_NAME = "budget api key cache"
"""How the listening connection shows in ``pg_stat_activity``."""


class KeyCache:
    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._keys: dict[str, ApiKey] = {}
        self._generation = 0
        self._alive_at = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self.backend_pid: int | None = None
        """The listening connection's PostgreSQL backend, while there is one."""

    @property
    def trusted(self) -> bool:
        """Listening, on a connection that proved alive within ``TRUST_SECONDS``."""
        return time.monotonic() - self._alive_at < TRUST_SECONDS

    async def find(
        self, key_hash: str, lookup: Callable[[], Awaitable[ApiKey | None]]
    ) -> ApiKey | None:
        """The live key with ``key_hash``: remembered, or ``lookup()`` (kept if live)."""
        if not self.trusted:
            return await lookup()
        known = self._keys.get(key_hash)
        if known is not None:
            return known
        generation = self._generation
        found = await lookup()
        # A revocation heard while the lookup ran may be of this very key: keep nothing.
        if found is not None and self.trusted and generation == self._generation:
            self._keys[key_hash] = found
        return found

    def forget(self) -> None:
        self._generation += 1
        self._keys.clear()

    def start(self) -> None:
        if self._task is None:
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
                await self._listen_once(recovered=failures > 0)
            except Exception as exc:  # whatever it was: keep nothing, and retry
                # Once per outage. The type suffices: libpq's text may name the server.
                if not failures:
                    log.warning(
                        "API key cache: not listening for revocations (%s); every request"
                        " looks its key up until it is back",
                        type(exc).__name__,
                    )
            finally:
                self._alive_at = float("-inf")
                self.backend_pid = None
                self.forget()
            await asyncio.sleep(_RETRY_SECONDS[min(failures, len(_RETRY_SECONDS) - 1)])
            failures += 1

    async def _listen_once(self, *, recovered: bool) -> None:
        async with await connect(self._database_url, application_name=APPLICATION_NAME) as conn:
            await conn.execute(f"LISTEN {KEYS_CHANGED}")
            self.forget()  # anything revoked before this connection listened
            self.backend_pid = conn.info.backend_pid
            self._alive_at = time.monotonic()
            if recovered:
                log.info("API key cache: listening for revocations again")
            while True:
                async for _ in conn.notifies(timeout=_PING_SECONDS, stop_after=1):
                    self.forget()
                # Bounded: a dead connection's query could hang until TCP gives up.
                # (asyncio.timeout, not wait_for: see budget.waits.)
                async with asyncio.timeout(TRUST_SECONDS):
                    await conn.execute("SELECT 1")
                self._alive_at = time.monotonic()
