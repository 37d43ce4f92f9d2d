"""Benchmark: what `GET /api/v1/spend` reads, per period, for every key and for one.

An embedded PostgreSQL gets a month of spend buckets (``--users`` users, 20 projects,
20 models, 6 providers and the global total, each busy in every quarter hour of
November 2026: the worst case), and the same month as the report rollups' daily rows.
Then ``spend_for_period`` (what the API, ``budget spend`` and the query service ask) is
timed ``--repeat`` times for each period, for every key, for one scope and for one key.

Figures (one JSON line each): ``<period>_<which>_ms`` (median), with the rows it returns;
``month_all_keys_from_daily_rollups_ms``: the same month for every key from the rollups'
daily rows, for scale.

Run: ``./run python bench/spend.py [--users 200] [--repeat 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from budget.periods import Period
from projections.db import connect
from projections.engine.checkpoints import ensure_projection
from projections.engine.projection import Connection
from projections.migrate import migrate
from projections.queries import spend_for_period
from projections.reports import ReportsProjection
from projections.spend import MEASURES, SpendProjection
from services.embedded import EmbeddedPostgres

AT = datetime(2026, 11, 20, tzinfo=UTC)
MONTH = "timestamptz '2026-11-01', timestamptz '2026-11-30 23:45'"
NAMES = ", ".join(name for name, _, _ in MEASURES)
VALUES = ", ".join("0.01" if name == "cost" else "1" for name, _, _ in MEASURES)


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    print(
        json.dumps({"figure": figure, "value": round(value, 3), "unit": unit, **extra}), flush=True
    )


async def fill(conn: Connection, users: int) -> None:
    keys = [
        ("global", ""),
        *(("provider", f"provider-{i}") for i in range(6)),
        *(("model", f"model-{i}") for i in range(20)),
        *(("project", f"project-{i}") for i in range(20)),
        *(("user", f"user-{i}") for i in range(users)),
    ]
    await conn.execute("CREATE TEMP TABLE bench_keys (scope text, scope_key text)")
    async with conn.cursor().copy("COPY bench_keys FROM STDIN") as copy:
        for key in keys:
            await copy.write_row(key)
    await conn.execute(
        f"INSERT INTO spend_buckets (scope, scope_key, bucket_start, {NAMES})"
        f" SELECT scope, scope_key, b, {VALUES} FROM bench_keys,"
        f" generate_series({MONTH}, interval '15 minutes') AS b ORDER BY b".encode()
    )
    await conn.execute(
        f"INSERT INTO report_daily (dimension, key1, key2, period_start, {NAMES})"
        f" SELECT CASE scope WHEN 'global' THEN 'total' ELSE scope END, scope_key, '', d,"
        f" {VALUES} FROM bench_keys, generate_series({MONTH}, interval '1 day') AS d".encode()
    )
    await conn.commit()
    await conn.execute("ANALYZE")


async def median_ms(repeat: int, ask: Callable[[], Awaitable[list[Any]]]) -> tuple[float, int]:
    times, rows = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        rows = len(await ask())
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), rows


async def main(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="bench-spend-"))
    with EmbeddedPostgres(data / "postgres", database="bench").start() as postgres:
        await asyncio.to_thread(migrate, postgres.url)
        async with await connect(postgres.url) as conn:
            for projection in (SpendProjection(), ReportsProjection()):
                await ensure_projection(conn, projection)
            await fill(conn, args.users)
            for period in (Period.DAILY, Period.WEEKLY, Period.MONTHLY):
                for which, scope, key in (
                    ("all_keys", None, None),
                    ("one_scope", "global", None),
                    ("one_key", None, "user-7"),
                ):
                    ms, rows = await median_ms(
                        args.repeat,
                        lambda p=period, s=scope, k=key: spend_for_period(conn, p, AT, s, k),
                    )
                    emit(f"{period.value}_{which}_ms", ms, "ms", rows=rows, users=args.users)
            rollups = (
                "SELECT dimension, key1, sum(cost), sum(requests) FROM report_daily"
                " WHERE period_start >= '2026-11-01' AND period_start < '2026-12-01'"
                " GROUP BY 1, 2"
            )

            async def from_rollups() -> list[Any]:
                return await (await conn.execute(rollups)).fetchall()

            ms, rows = await median_ms(args.repeat, from_rollups)
            emit("month_all_keys_from_daily_rollups_ms", ms, "ms", rows=rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200, help="user keys, each busy all month")
    parser.add_argument("--repeat", type=int, default=10, help="timings per figure")
    asyncio.run(main(parser.parse_args()))
