"""Benchmark: what one batch of the usage group costs, statement by statement.

The usage group's runner applies pre-decoded batches (``ProjectionRunner.process``: the
checkpoints locked, the shared ledger staged and recorded, spend, history and reports
applied, the checkpoints advanced, one transaction) to fresh versions, at each
``--sizes`` batch size. It prints, per batch, the consumer's CPU, the PostgreSQL backend's
CPU (from ``/proc/PID/schedstat``: nanoseconds) and the wall time; with
``--by-statement``, each statement's share too, the statements then sent one at a time
(in the runner's pipeline a statement's server time falls on whichever later call waits
for results).

Run: ``./run python bench/batch_parts.py [--events 20000] [--sizes 30,2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import nats
import psycopg
from nats.aio.client import Client
from rebuild_parts import decoded_batches, fill
from stack import embedded_stack

from events import Topology
from projections import ledger as ledger_module
from projections.db import connect
from projections.engine import runner as runner_module
from projections.engine.checkpoints import create_version, drop_version
from projections.engine.preparer import Prepared
from projections.engine.projection import Applied
from projections.engine.reader import Delivery
from projections.engine.runner import ProjectionRunner
from projections.engine.writer import VersionWriter
from projections.ledger import SHARED_LEDGER
from projections.registry import GROUPS, PROJECTIONS
from projections.usage_rows import create_staging
from services.worker import tune_gc

VERSION = 900
"""The fresh versions the batches are applied to (dropped before and after)."""


class StatementMeter:
    """PostgreSQL CPU and wall time by statement, for one backend."""

    def __init__(self, backend_pid: int) -> None:
        self._schedstat = Path(f"/proc/{backend_pid}/schedstat")
        self.cpu_ns: collections.Counter[str] = collections.Counter()
        self.wall_ns: collections.Counter[str] = collections.Counter()

    def backend_ns(self) -> int:
        return int(self._schedstat.read_text().split()[0])

    @contextmanager
    def part(self, label: str) -> Iterator[None]:
        cpu, wall = self.backend_ns(), time.perf_counter_ns()
        yield
        self.wall_ns[label] += time.perf_counter_ns() - wall
        self.cpu_ns[label] += self.backend_ns() - cpu


def _label(query: Any) -> str:
    text = " ".join((query.decode() if isinstance(query, bytes) else str(query)).split())
    # a statement that writes is named by the table it writes last (a CTE's reads first)
    target = (
        re.findall(r"INSERT INTO (\w+)", text)
        or re.findall(r"^UPDATE (\w+)", text)
        or re.findall(r"FROM (\w+)", text)
    )
    return f"{target[-1] if target else ''}: {text[:40]}"


async def measure(
    nc: Client,
    topology: Topology,
    database_url: str,
    batches: list[list[Applied]],
    size: int,
    *,
    by_statement: bool,
) -> None:
    projections = [PROJECTIONS[name] for name in GROUPS["usage"]]
    conn = await connect(database_url)
    await conn.execute("SET synchronous_commit = off")
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await create_staging(conn)  # as the runner does when it opens
    row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
    assert row is not None
    meter = StatementMeter(int(row[0]))
    writers = [VersionWriter(p, VERSION) for p in projections]
    async with conn.transaction():
        for p in projections:
            await drop_version(conn, p, VERSION)
            await create_version(conn, p, VERSION, indexes=True)
        await conn.execute("TRUNCATE " + ", ".join(SHARED_LEDGER.tables))
    execute = psycopg.AsyncConnection.execute

    async def timed_execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        with meter.part(_label(query)):
            return await execute(self, query, *args, **kwargs)

    stage = getattr(ledger_module, "stage_rows")  # noqa: B009  (a private name of it)

    async def timed_stage(*args: Any, **kwargs: Any) -> Any:
        with meter.part("stage (DDL + COPY)"):
            return await stage(*args, **kwargs)

    @asynccontextmanager
    async def one_at_a_time(conn: Any) -> AsyncIterator[None]:
        yield

    pipelined = runner_module.pipelined
    if by_statement:
        psycopg.AsyncConnection.execute = timed_execute  # type: ignore[method-assign]
        setattr(ledger_module, "stage_rows", timed_stage)  # noqa: B010
        runner_module.pipelined = one_at_a_time
    runner = ProjectionRunner(projections, nc=nc, database_url=database_url, topology=topology)
    # the runner's batch path on this connection, at the fresh versions (``open`` would
    # bind a consumer and take the live versions' locks)
    runner._conn = conn
    runner.writers = writers
    events = [a for batch in batches for a in batch]
    chunks: list[list[Delivery[Prepared]]] = [
        [Delivery(a.stream_seq, b"", "", "", a) for a in events[i : i + size]]
        for i in range(0, len(events), size)
    ]
    python = time.process_time()
    try:
        for chunk in chunks:
            with meter.part("batch"):
                await runner.process(chunk)
    finally:
        python = time.process_time() - python
        psycopg.AsyncConnection.execute = execute  # type: ignore[method-assign]
        setattr(ledger_module, "stage_rows", stage)  # noqa: B010
        runner_module.pipelined = pipelined
        async with conn.transaction():
            for p in projections:
                await drop_version(conn, p, VERSION)
            await conn.execute("TRUNCATE " + ", ".join(SHARED_LEDGER.tables))
        await conn.close()
    n = len(chunks)
    inner = sum(v for k, v in meter.cpu_ns.items() if k != "batch")
    parts = {
        label: {
            "pg_cpu_us": round(meter.cpu_ns[label] / n / 1e3, 1),
            "wall_us": round(meter.wall_ns[label] / n / 1e3, 1),
        }
        for label in sorted(meter.cpu_ns, key=lambda k: -meter.cpu_ns[k])
    }
    parts["begin + commit (the rest of batch)"] = {
        "pg_cpu_us": round((meter.cpu_ns["batch"] - inner) / n / 1e3, 1)
    }
    print(
        json.dumps(
            {
                "figure": "usage_group_batch",
                "batch_size": size,
                "batches": n,
                "python_cpu_us_per_batch": round(python / n * 1e6, 1),
                "parts": parts,
            }
        ),
        flush=True,
    )


async def main(args: argparse.Namespace) -> None:
    tune_gc()
    async with embedded_stack("batch-parts", workers=["policies"], data_dir=args.data_dir) as (
        info,
        settings,
    ):
        await fill(settings, info, args.events)
        nc = await nats.connect(info.nats_url)
        try:
            _, batches = await decoded_batches(nc, settings)
            for size in (int(s) for s in args.sizes.split(",")):
                await measure(
                    nc,
                    settings.topology,
                    info.database_url,
                    batches,
                    size,
                    by_statement=args.by_statement,
                )
        finally:
            await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="usage events in the log")
    parser.add_argument("--data-dir", type=Path, help="keep the stack (and its log) here")
    parser.add_argument(
        "--by-statement",
        action="store_true",
        help="time each statement too (its own cost inflates the consumer's CPU)",
    )
    parser.add_argument("--sizes", default="30,2000", help="comma-separated batch sizes")
    asyncio.run(main(parser.parse_args()))
