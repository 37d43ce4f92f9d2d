"""``budget.queries.Queries`` read straight from PostgreSQL: what the query service
answers with, and what the CLI uses (operators hold the database's credentials)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

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

__all__ = ["DatabaseQueries"]

_POLL = 0.01  # seconds between checkpoint reads while waiting for a change to apply


class DatabaseQueries:
    """Up to ``connections`` queries run at once, each on a connection of its own (opened
    on first use, kept until ``close``). A query that finds its connection dropped by the
    server (a restart) fails, and the idle connections go with it: the next queries open
    fresh ones."""

    def __init__(self, database_url: str, *, connections: int = 1) -> None:
        self.database_url = database_url
        self._idle: asyncio.Queue[Connection] = asyncio.Queue()
        self._slots = asyncio.Semaphore(connections)
        self._open: list[Connection] = []

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
        async with self._slots:
            if self._idle.empty():
                conn = await connect(self.database_url)
                self._open.append(conn)
            else:
                conn = self._idle.get_nowait()
            if conn.closed or conn.broken:  # a restarted database: start afresh
                self._open.remove(conn)
                conn = await connect(self.database_url)
                self._open.append(conn)
            try:
                yield conn
            except psycopg.OperationalError:
                if conn.broken or conn.closed:  # the server went away: so did the idle ones
                    await self._drop_idle()
                raise
            finally:
                self._idle.put_nowait(conn)

    async def _drop_idle(self) -> None:
        while not self._idle.empty():
            stale = self._idle.get_nowait()
            self._open.remove(stale)
            await stale.close()

    async def policies(self, scope: BudgetScope | None = None) -> list[BudgetPolicy]:
        async with self.connection() as conn:
            policies = await load_policies(conn)
        return [p for p in policies if scope is None or p.scope is scope]

    async def spend(self, query: SpendQuery, *, key: str | None = None) -> list[SpendRow]:
        """``key``: only that scope key's rows (the HTTP API's filter)."""
        scope = query.scope.value if query.scope else None
        at = query.at or utc_now()
        async with self.connection() as conn:
            return await spend_for_period(conn, Period(query.period), at, scope, key)

    async def rules(self) -> list[AlertRule]:
        async with self.connection() as conn:
            return await load_rules(conn)

    async def alerts(self, query: AlertsQuery) -> list[StoredAlert]:
        async with self.connection() as conn:
            return await find_alerts(conn, query)

    async def deliveries(self, alert_id: uuid.UUID) -> list[AlertDelivery]:
        async with self.connection() as conn:
            return await alert_deliveries(conn, alert_id)

    async def report(self, query: ReportQuery) -> Report:
        async with self.connection() as conn:
            return await ReportBuilder(conn).answer(query)

    async def position(self, projection: str, at_least: int = 0, within: float = 0) -> int:
        """The stream sequence ``projection``'s live version has applied, once it reaches
        ``at_least`` or ``within`` seconds have passed."""
        deadline = time.monotonic() + within
        while True:
            async with self.connection() as conn:
                position = await live_position(conn, projection)
            if position >= at_least or time.monotonic() >= deadline:
                return position
            await asyncio.sleep(_POLL)

    async def wait_applied(self, projection: str, seq: int, within: float) -> None:
        if await self.position(projection, seq, within) < seq:
            raise not_applied(projection, seq, within)
