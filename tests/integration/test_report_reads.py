"""Reports read the rollups by index ranges only, and no more rows than their windows need:
whole UTC days as daily rows, quarter-hour rows only between a window's ends and the UTC
midnights nearest them (counted by PostgreSQL itself, with sequential scans refused)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from events import utc_now
from projections.db import connect
from projections.engine.checkpoints import ensure_projection
from projections.engine.projection import Applied, Connection
from projections.registry import get_projection
from projections.report_queries import ReportBuilder

from support import apply_batch, usage_event

pytestmark = pytest.mark.integration

# Ten January days (no DST in New York) well inside the contract's two years.
FIRST = datetime(utc_now().year - 1, 1, 10, tzinfo=UTC)
DAYS = 10
CALLS = [FIRST + timedelta(hours=h) for h in range(-24, (DAYS + 1) * 24)]


@pytest.fixture
async def conn(db: str) -> AsyncIterator[Connection]:
    """The rollups of one call at the top of every hour from a day before the ten days to
    a day after them (one quarter-hour row an hour, one daily row a day)."""
    connection = await connect(db)
    reports = get_projection("reports")
    await ensure_projection(connection, reports)
    events = [usage_event(at=at, project="apollo") for at in CALLS]
    async with connection.transaction():
        await apply_batch(
            connection, reports, 1, [Applied.of(n, e) for n, e in enumerate(events, 1)]
        )
    yield connection
    await connection.close()


async def rows_read(conn: Connection, report: Callable[[], Awaitable[Any]]) -> dict[str, int]:
    """Rows ``report`` read from each rollup table (the backend's own counters, before and
    after, in one transaction: they are not flushed inside it), refusing sequential scans
    so that every read is bounded by an index range."""

    async def counters() -> dict[str, int]:
        cursor = await conn.execute(
            """SELECT relname, seq_tup_read + coalesce(idx_tup_fetch, 0)
               FROM pg_stat_xact_user_tables
               WHERE schemaname = current_schema() AND relname ~ '^report_(daily|quarterly)_'"""
        )
        return {str(name).rsplit("_", 1)[0]: int(n) for name, n in await cursor.fetchall()}

    async with conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        before = await counters()
        await report()
        after = await counters()
    return {table: after[table] - before[table] for table in ("report_daily", "report_quarterly")}


async def test_utc_days_are_read_as_daily_rows_alone(conn: Connection) -> None:
    builder = ReportBuilder(conn)
    read = await rows_read(
        conn, lambda: builder.daily(conn, "project", "apollo", FIRST.date(), DAYS, UTC)
    )
    assert read == {"report_daily": DAYS, "report_quarterly": 0}


async def test_local_days_read_only_the_quarter_hours_between_them_and_utc_midnight(
    conn: Connection,
) -> None:
    """New York's days start at 05:00 UTC in January: each is its UTC day's row, minus the
    five hours before its start, plus the five after the next UTC midnight (5 + 5 rows of
    calls on the hour), not its 24 hours of quarter-hour rows."""
    builder = ReportBuilder(conn)
    new_york = ZoneInfo("America/New_York")
    read = await rows_read(
        conn, lambda: builder.daily(conn, "project", "apollo", FIRST.date(), DAYS, new_york)
    )
    assert read == {"report_daily": DAYS, "report_quarterly": DAYS * (5 + 5)}


async def test_a_custom_window_reads_its_ragged_ends_from_the_nearest_midnight(
    conn: Connection,
) -> None:
    """[00:15 on the first day, 23:45 on the last): the eleven days' rows, minus the one
    row of 00:00 on the first (and the empty quarter hour before midnight on the last)."""
    builder = ReportBuilder(conn)
    start, end = FIRST + timedelta(minutes=15), FIRST + timedelta(days=DAYS, hours=23, minutes=45)
    totals: list[Any] = []

    async def report() -> None:
        totals.extend(await builder.totals(conn, "user", start, end))

    read = await rows_read(conn, report)
    assert read == {"report_daily": DAYS + 1, "report_quarterly": 1}
    calls = sum(1 for at in CALLS if start <= at < end)
    assert [(t.key1, t.requests) for t in totals] == [("alice", calls)]
