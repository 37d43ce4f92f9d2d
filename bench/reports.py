"""Benchmark: reports from rollups of 10 million usage events over 90 days.

An embedded PostgreSQL gets ``--events`` usage rows spread over the 90 days before now
(500 users, 20 projects, 6 models of 3 providers, 2 call kinds) in the raw usage history,
and the same events rolled up through the materializer's own apply path
(``ReportsProjection.roll_up``, the SQL every batch goes through) in batches of
``--batch``. Then each report is timed ``--repeat`` times:

Figures (one JSON line each):
- ``build_events_per_s``: rolling the events up through the apply path.
- ``summary_30d_ms``: a 30-day report by provider and model, from the rollups (median).
- ``trend_30d_ms``: a 30-day daily trend, from the rollups (median).
- ``trend_90d_ms`` / ``trend_90d_new_york_ms``: a 90-day daily trend in UTC and in
  America/New_York (days off UTC midnight), with the rollup rows each reads.
- ``custom_89d_by_user_ms``: an 89-day window ending now (ragged ends) by user (500 keys),
  with the rollup rows it reads.
- ``summary_30d_raw_scan_ms``: the same 30-day summary computed by scanning the raw usage
  history (median), with ``ratio`` to the rollup figure; the totals are checked equal.

Run: ``./run python bench/reports.py [--events 10000000] [--repeat 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from budget.reports import ReportGenerator
from events import utc_now
from projections.database_queries import DatabaseQueries
from projections.db import connect
from projections.engine.checkpoints import ensure_projection
from projections.migrate import migrate
from projections.registry import PROJECTIONS
from projections.report_queries import ReportBuilder, floor_quarter
from projections.reports import ReportsProjection
from projections.usage_rows import STAGED, STAGED_COLUMNS, STAGING_DDL, Staged
from services.embedded import EmbeddedPostgres

DAYS = 90
# A row of usage: one generated event, a function of its number i and the row count n.
GENERATED = """
    SELECT i AS stream_seq,
           gen_random_uuid() AS event_id,
           %(end)s::timestamptz - interval '90 days' * (1 - i::float8 / %(n)s)
               + (i %% 37) * interval '1 second' AS occurred_at,
           (ARRAY['openai','openai','anthropic','anthropic','google','google'])[i %% 6 + 1]
               AS provider,
           (ARRAY['gpt-4o','gpt-4o-mini','claude-sonnet-4','claude-haiku-4','gemini-2.5-pro',
                  'gemini-2.5-flash'])[i %% 6 + 1] AS model,
           CASE WHEN i %% 10 = 0 THEN 'embedding' ELSE 'chat' END AS kind,
           'user-' || (i * 7919 %% 500) AS user_id,
           'project-' || (i * 7919 %% 500 %% 20) AS project_id,
           round((0.0005 + (i * 2654435761 %% 1000) / 100000.0)::numeric, 6) AS cost,
           400 + i %% 800 AS input_uncached, i %% 300 AS input_cache_read,
           100 + i %% 500 AS output_text
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i
"""


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    print(
        json.dumps({"figure": figure, "value": round(value, 3), "unit": unit, **extra}), flush=True
    )


async def build(url: str, events: int, batch: int) -> None:
    conn = await connect(url)
    reports = ReportsProjection()
    end = utc_now()
    try:
        for projection in PROJECTIONS.values():
            await ensure_projection(conn, projection)
        await conn.execute(
            f"""INSERT INTO usage_history_v1 (event_id, stream_seq, occurred_at, provider,
                provider_key, model, model_key, kind, user_id, project_id, cost, input_uncached,
                input_cache_read, input_cache_write, output_text, output_reasoning,
                embedding_tokens, audio_seconds, tags)
            SELECT event_id, stream_seq, occurred_at, provider, provider, model, model, kind,
                   user_id, project_id, cost, input_uncached, input_cache_read, 0, output_text,
                   0, 0, 0, '{{}}'
            FROM ({GENERATED}) g""".encode(),
            {"end": end, "n": events, "lo": 1, "hi": events},
        )
        # every event at its first appearance in the shared usage ledger, as live workers
        # record it: the rollups count those
        await conn.execute(
            "INSERT INTO usage_ledger (event_id, stream_seq, occurred_at, cost, provider,"
            " model, kind, user_id, project_id) SELECT event_id, stream_seq, occurred_at, cost,"
            " provider_key, model_key, kind, user_id, project_id FROM usage_history_v1"
        )
        await conn.execute("ANALYZE usage_history_v1")
        await conn.execute("ANALYZE usage_ledger")
        started = time.perf_counter()
        await conn.execute(STAGING_DDL.encode())
        staged = ", ".join(name for name, _ in STAGED_COLUMNS)
        selected = staged.replace("reservation_id", "NULL")
        for lo in range(1, events + 1, batch):
            hi = min(lo + batch - 1, events)
            async with conn.transaction():
                # staged as the ledger stages a batch, then rolled up by the live SQL
                await conn.execute(
                    f"INSERT INTO {STAGED} ({staged}) SELECT {selected}"
                    " FROM usage_history_v1 WHERE stream_seq BETWEEN %s AND %s".encode(),
                    (lo, hi),
                )
                seqs = "{" + ",".join(map(str, range(lo, hi + 1))) + "}"
                await reports.roll_up(conn, 1, Staged(seqs, lo, hi, hi - lo + 1))
        emit(
            "build_events_per_s",
            events / (time.perf_counter() - started),
            "events/s",
            events=events,
        )
        await conn.execute("ANALYZE report_daily_v1")
        await conn.execute("ANALYZE report_quarterly_v1")
    finally:
        await conn.close()


async def timed(repeat: int, call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    await call()  # warm: plans, caches
    samples, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = await call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), result


async def raw_summary(url: str, days: int) -> dict[tuple[str, str], Decimal]:
    conn = await connect(url)
    try:
        now = utc_now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        cursor = await conn.execute(
            "SELECT provider, model, sum(cost), count(*),"
            " sum(input_uncached + input_cache_read + input_cache_write),"
            " sum(output_text + output_reasoning)"
            " FROM usage_history WHERE occurred_at >= %s AND occurred_at < %s"
            " GROUP BY 1, 2 ORDER BY 3 DESC",
            (now - timedelta(days=days), now),
        )
        return {(r[0], r[1]): r[2] for r in await cursor.fetchall()}
    finally:
        await conn.close()


async def rows_read(url: str, report: Callable[[ReportBuilder], Awaitable[Any]]) -> dict[str, int]:
    """Rows ``report`` reads from each rollup table (the backend's own counters, before and
    after, in one transaction)."""
    conn = await connect(url)
    query = """SELECT relname, seq_tup_read + coalesce(idx_tup_fetch, 0)
               FROM pg_stat_xact_user_tables WHERE relname ~ '^report_(daily|quarterly)_'"""
    try:
        async with conn.transaction():
            before = dict(await (await conn.execute(query)).fetchall())
            await report(ReportBuilder(conn))
            after = dict(await (await conn.execute(query)).fetchall())
        return {str(name): int(after[name] - before.get(name, 0)) for name in after}
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="bench-reports-"))
    with EmbeddedPostgres(data / "postgres", database="bench").start() as postgres:
        await asyncio.to_thread(migrate, postgres.url)
        await build(postgres.url, args.events, args.batch)
        # The reports as the query service (and the CLI) builds them, without the NATS hop.
        queries = DatabaseQueries(postgres.url)
        generator = ReportGenerator(queries)
        now = utc_now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)

        summary_ms, summary = await timed(
            args.repeat,
            lambda: generator.generate_report(now - timedelta(days=30), now, ["provider", "model"]),
        )
        emit("summary_30d_ms", summary_ms, "ms", repeat=args.repeat, events=args.events)
        trend_ms, trend = await timed(args.repeat, lambda: generator.generate_trend_report(30))
        emit("trend_30d_ms", trend_ms, "ms", repeat=args.repeat, points=len(trend.main.rows))
        for name, tz in (("trend_90d_ms", "UTC"), ("trend_90d_new_york_ms", "America/New_York")):
            ms, _ = await timed(
                args.repeat, lambda tz=tz: generator.generate_trend_report(90, tz=tz)
            )
            read = await rows_read(
                postgres.url, lambda b, tz=tz: b.generate_trend_report(90, tz=ZoneInfo(tz))
            )
            emit(name, ms, "ms", repeat=args.repeat, rows_read=read)
        until = floor_quarter(utc_now())
        since = until - timedelta(days=89)
        ms, _ = await timed(args.repeat, lambda: generator.generate_report(since, until, ["user"]))
        read = await rows_read(postgres.url, lambda b: b.generate_report(since, until, ["user"]))
        emit("custom_89d_by_user_ms", ms, "ms", repeat=args.repeat, rows_read=read)
        await queries.close()
        raw_ms, raw = await timed(max(3, args.repeat // 5), lambda: raw_summary(postgres.url, 30))
        rolled = {(r["provider"], r["model"]): r["cost_usd"] for r in summary.main.records()}
        emit(
            "summary_30d_raw_scan_ms",
            raw_ms,
            "ms",
            ratio=round(raw_ms / summary_ms, 1),
            totals_match=rolled == raw,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="usage events")
    parser.add_argument("--batch", type=int, default=20_000, help="events per apply")
    parser.add_argument("--repeat", type=int, default=20, help="timings per report")
    asyncio.run(main(parser.parse_args()))
