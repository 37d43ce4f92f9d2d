"""``budget.queries.Queries`` read straight from PostgreSQL: what the query service
answers with, and what the CLI uses (operators hold the database's credentials)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import TypeVar

import psycopg

from budget.periods import Period
from budget.queries import not_applied
from budget.report_format import Report
from events import AlertRule, BudgetPolicy, BudgetScope, utc_now
from events.queries import (
    AlertDelivery,
    AlertsQuery,
    ReportQuery,
    SpendQuery,
    SpendRow,
    StoredAlert,
)
from projections.alerts import load_rules
from projections.db import connect
from projections.engine.checkpoints import live_position
from projections.engine.projection import Connection
from projections.policies import load_policies
from projections.queries import alert_deliveries, find_alerts, spend_for_period
from projections.report_queries import ReportBuilder

__all__ = ["ConnectionLost", "DatabaseQueries", "asking"]

T = TypeVar("T")

asking: ContextVar[str | None] = ContextVar("asking", default=None)
"""Who the reads of the current task are for (the query service sets each request's caller;
None: no one to share out between, as in the CLI)."""

_FIRST_POLL, _MOST_POLL = 0.01, 0.1
"""Seconds between checkpoint reads while waiting for a change to apply: 10 ms at first (a
change is applied within milliseconds when its worker runs), twice as long after each
read, at most 100 ms: a wait on a worker that is down (up to a minute) would otherwise
read 100 times a second."""


class ConnectionLost(psycopg.OperationalError):
    """The server dropped a pooled connection (a restart, say): a read may be tried again
    on a fresh one."""


class DatabaseQueries:
    """Up to ``connections`` queries run at once, each on a connection of its own (opened
    on first use, kept until ``close``). A query that finds its connection dropped by the
    server (a restart) is run once more on a fresh one, and the idle connections go with
    it. ``per_caller``: the most connections the reads of one caller (``asking``) hold at
    once, so one caller's slow questions leave connections to answer the others on."""

    def __init__(
        self, database_url: str, *, connections: int = 1, per_caller: int | None = None
    ) -> None:
        self.database_url = database_url
        self._idle: asyncio.Queue[Connection] = asyncio.Queue()
        self._slots = asyncio.Semaphore(connections)
        self._open: list[Connection] = []
        self._shares = _Shares(per_caller or connections)

    async def __aenter__(self) -> DatabaseQueries:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait()
        for conn in self._open:
            await conn.close()
        self._open.clear()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A connection of the pool for the block; ``ConnectionLost`` when the server
        dropped it (the idle ones go with it)."""
        async with self._shares.of(asking.get()), self._slots:
            if self._idle.empty():
                conn = await connect(self.database_url)
                self._open.append(conn)
            else:
                conn = self._idle.get_nowait()
            if conn.closed or conn.broken:  # a restarted database: start afresh
                self._open.remove(conn)
                await conn.close()
                conn = await connect(self.database_url)
                self._open.append(conn)
            try:
                yield conn
            except psycopg.OperationalError as exc:
                if not (conn.broken or conn.closed):
                    raise
                await self._drop_idle()  # the server went away: so did the idle ones
                raise ConnectionLost(str(exc)) from exc
            finally:
                self._idle.put_nowait(conn)

    async def _drop_idle(self) -> None:
        while not self._idle.empty():
            stale = self._idle.get_nowait()
            self._open.remove(stale)
            await stale.close()

    async def read(self, query: Callable[[Connection], Awaitable[T]]) -> T:
        """``query`` (a read: it changes nothing) on a connection of the pool; once more on
        a fresh one if the server had dropped it (a restart since its last use)."""
        try:
            async with self.connection() as conn:
                return await query(conn)
        except ConnectionLost:
            async with self.connection() as conn:
                return await query(conn)

    async def policies(self, scope: BudgetScope | None = None) -> list[BudgetPolicy]:
        policies = await self.read(load_policies)
        return [p for p in policies if scope is None or p.scope is scope]

    async def spend(self, query: SpendQuery, *, key: str | None = None) -> list[SpendRow]:
        """``key``: only that scope key's rows (the HTTP API's filter), as spend is counted
        under it in each scope (``spend_for_period``: a provider's however it is spelt,
        "OpenAI" is "openai"; a model's however it is cased, "GPT-4o" is "gpt-4o")."""
        scope = query.scope.value if query.scope else None
        at = query.at or utc_now()
        return await self.read(
            lambda conn: spend_for_period(conn, Period(query.period), at, scope, key, query.after)
        )

    async def rules(self) -> list[AlertRule]:
        return await self.read(load_rules)

    async def alerts(self, query: AlertsQuery) -> list[StoredAlert]:
        return await self.read(lambda conn: find_alerts(conn, query))

    async def deliveries(self, alert_id: uuid.UUID) -> list[AlertDelivery]:
        return await self.read(lambda conn: alert_deliveries(conn, alert_id))

    async def report(self, query: ReportQuery) -> Report:
        return await self.read(lambda conn: ReportBuilder(conn).answer(query))

    async def position(self, projection: str, at_least: int = 0, within: float = 0) -> int:
        """The stream sequence ``projection``'s live version has applied, once it reaches
        ``at_least`` or ``within`` seconds have passed."""
        deadline = time.monotonic() + within
        pause = _FIRST_POLL
        while True:
            position = await self.read(lambda conn: live_position(conn, projection))
            left = deadline - time.monotonic()
            if position >= at_least or left <= 0:
                return position
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, _MOST_POLL)

    async def wait_applied(self, projection: str, seq: int, within: float) -> None:
        if await self.position(projection, seq, within) < seq:
            raise not_applied(projection, seq, within)


class _Shares:
    """At most ``most`` holders at once per caller; a caller's own semaphore exists while
    any of its reads wants one (callers come and go: none is remembered after)."""

    def __init__(self, most: int) -> None:
        self._most = most
        self._shares: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @contextlib.asynccontextmanager
    async def of(self, caller: str | None) -> AsyncIterator[None]:
        if caller is None:
            yield
            return
        share, users = self._shares.get(caller, (asyncio.Semaphore(self._most), 0))
        self._shares[caller] = (share, users + 1)
        try:
            async with share:
                yield
        finally:
            _, users = self._shares[caller]
            if users > 1:
                self._shares[caller] = (share, users - 1)
            else:
                del self._shares[caller]
