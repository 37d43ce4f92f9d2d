"""Benchmark: the parts of a rebuild, measured separately on the embedded stack.

Figures (one JSON line each, µs of wall time per event plus the CPU each process spent):
- ``read_noop``: the whole stream through ``PullReader`` with a no-op prepare (NATS and
  the nats-py client's cost per message);
- ``read_prepare``: the same with the engine's ``Preparer`` (decode and check);
- ``apply_<projection>``: pre-decoded batches applied to a fresh version, one transaction
  each, its reader indexes maintained row by row, and then built at the end as a rebuild
  does (``deferred_indexes``);
- ``rebuild_<projection>``: the whole rebuild, swap included.

The stream is filled once with ``--events`` realistic usage events; with ``--data-dir`` a
later run finds it again and skips the fill.

Run: ``./run python bench/rebuild_parts.py [--events 200000] [--data-dir /tmp/rebuild-parts]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
from ingest import record, stream_last_seq
from nats.aio.client import Client
from stack import embedded_stack

from budget.config import Settings
from budget.tracker import get_usage_tracker
from projections.db import connect
from projections.engine.checkpoints import create_indexes, create_version, drop_version
from projections.engine.log import bind_consumer
from projections.engine.preparer import Preparer
from projections.engine.projection import Applied
from projections.engine.reader import PullReader
from projections.engine.rebuild import rebuild
from projections.engine.runner import EngineConfig
from projections.registry import PROJECTIONS
from services.stack import StackInfo
from services.worker import tune_gc

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int, *, with_children: bool = False) -> float:
    """User + system CPU of one process from /proc; ``with_children`` adds that of its
    children that have exited (PostgreSQL backends end with their connections)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICKS


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


class CpuMeter:
    """CPU seconds of this process, the stack's NATS server and its PostgreSQL (the
    postmaster, its live backends and those that ended) over a measured span."""

    def __init__(self, data_dir: Path) -> None:
        pids = json.loads((data_dir / "stack.json").read_text())
        self._nats, self._postgres = int(pids["nats_pid"]), int(pids["postgres_pid"])

    def _sample(self) -> dict[str, float]:
        postgres = _cpu_seconds(self._postgres, with_children=True)
        for child in _children(self._postgres):
            with contextlib.suppress(OSError):  # it ended meanwhile: counted next time
                postgres += _cpu_seconds(child)
        return {"nats": _cpu_seconds(self._nats), "postgres": postgres}

    @asynccontextmanager
    async def span(self) -> AsyncIterator[dict[str, float]]:
        spent: dict[str, float] = {}
        before, python_before, start = self._sample(), time.process_time(), time.perf_counter()
        yield spent
        wall, python = time.perf_counter() - start, time.process_time() - python_before
        after = self._sample()
        spent["wall"] = wall
        spent["python"] = python
        for role, cpu in after.items():
            spent[role] = cpu - before[role]


def emit(figure: str, events: int, spent: dict[str, float], **extra: object) -> None:
    per_event = {f"{k}_us": round(v / events * 1e6, 2) for k, v in spent.items()}
    print(
        json.dumps(
            {
                "figure": figure,
                "value": round(spent["wall"] / events * 1e6, 2),
                "unit": "us/event",
                "events_per_s": round(events / spent["wall"]),
                **per_event,
                "events": events,
                **extra,
            }
        ),
        flush=True,
    )


async def fill(settings: Settings, info: StackInfo, events: int) -> None:
    """Usage events until the log holds ``events`` messages (a few are not usage)."""
    have = await stream_last_seq(info.nats_url, settings)
    if have < events:
        tracker = await get_usage_tracker(settings)
        for i in range(have, events):
            await record(tracker, i)
        await tracker.flush()
        await tracker.close()


_readers = itertools.count()


async def read_all(
    nc: Client,
    settings: Settings,
    prepare: Callable[[int, str, int, bytes], Any],
    on_batch: Callable[[list[Any]], Awaitable[None]] | None = None,
) -> int:
    """Every usage message of the stream through a PullReader, acked batch by batch as a
    rebuild acks them; returns how many."""
    config = EngineConfig()
    stream = settings.topology.event_stream.name
    durable = f"bench-read-{os.getpid()}-{next(_readers)}"
    js = nc.jetstream()
    consumer = await bind_consumer(
        js,
        stream,
        durable,
        filter_subjects=PROJECTIONS["history"].filter_subjects(settings.topology),
        after_seq=0,
        max_ack_pending=config.max_ack_pending,
    )
    reader = PullReader(nc, stream, durable, prepare=prepare, request_batch=config.request_batch)
    await reader.start()
    total = int(consumer.num_pending or 0)
    try:
        seen = 0
        while seen < total:
            batch = await reader.take(config.batch_size, 0, wait=1.0)
            if not batch:
                continue
            seen += len(batch)
            if on_batch is not None:
                await on_batch([d.prepared for d in batch])
            await reader.ack_through(batch[-1])
    finally:
        await reader.stop()
        await js.delete_consumer(stream, durable)
    return total


async def decoded_batches(nc: Client, settings: Settings) -> tuple[int, list[list[Applied]]]:
    """The stream's usage events, decoded, in the batches a rebuild would apply."""
    prepare = Preparer(settings.topology, EngineConfig().time_bounds)
    batches: list[list[Applied]] = []

    async def keep(prepared: list[Any]) -> None:
        batches.append([p for p in prepared if isinstance(p, Applied)])

    return await read_all(nc, settings, prepare, keep), batches


async def apply_fresh(
    database_url: str,
    name: str,
    batches: Sequence[Sequence[Applied]],
    version: int,
    *,
    deferred_indexes: bool,
) -> None:
    """Apply ``batches`` to a new version as a rebuild does: with its reader indexes built
    at the end (``deferred_indexes``), or maintained from the first row as before."""
    projection = PROJECTIONS[name]
    conn = await connect(database_url)
    try:
        await conn.execute("SET synchronous_commit = off")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        async with conn.transaction():
            await create_version(conn, projection, version, indexes=not deferred_indexes)
        for batch in batches:
            async with conn.transaction():
                # as the runner does: the ledger stages the batch the projection reads
                if projection.ledger is not None:
                    await projection.ledger.record(conn, batch, writer="rebuild-parts")
                await projection.apply(conn, version, batch)
        if deferred_indexes:
            await create_indexes(conn, projection, version)
    finally:
        await conn.close()


async def cleanup(database_url: str, name: str, version: int) -> None:
    conn = await connect(database_url)
    try:
        async with conn.transaction():
            await drop_version(conn, PROJECTIONS[name], version)
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    tune_gc()  # as `budget projections rebuild` does
    names: list[str] = args.projections.split(",")
    # Only a worker that reads no usage: the stream is all this run reads.
    async with embedded_stack("rebuild-parts", workers=["policies"], data_dir=args.data_dir) as (
        info,
        settings,
    ):
        await fill(settings, info, args.events)
        meter = CpuMeter(info.data_dir)
        nc = await nats.connect(info.nats_url)
        try:
            for _ in range(args.runs):
                if "read" in args.parts:
                    async with meter.span() as spent:
                        total = await read_all(nc, settings, lambda *_: None)
                    emit("read_noop", total, spent)
                    prepare = Preparer(settings.topology, EngineConfig().time_bounds)
                    async with meter.span() as spent:
                        total = await read_all(nc, settings, prepare)
                    emit("read_prepare", total, spent)
                if "apply" in args.parts:
                    total, batches = await decoded_batches(nc, settings)
                    for name, deferred in itertools.product(names, (False, True)):
                        version = 900
                        await cleanup(info.database_url, name, version)
                        async with meter.span() as spent:
                            await apply_fresh(
                                info.database_url, name, batches, version, deferred_indexes=deferred
                            )
                        emit(f"apply_{name}", total, spent, deferred_indexes=deferred)
                        await cleanup(info.database_url, name, version)
                    del batches
                if "rebuild" in args.parts:
                    total = await stream_last_seq(info.nats_url, settings)
                    for name in names:
                        async with meter.span() as spent:
                            await rebuild(
                                PROJECTIONS[name],
                                nc=nc,
                                database_url=info.database_url,
                                topology=settings.topology,
                                config=EngineConfig(batch_size=args.batch_size),
                            )
                        emit(f"rebuild_{name}", total, spent, batch_size=args.batch_size)
        finally:
            await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="usage events in the log")
    parser.add_argument("--data-dir", type=Path, help="keep the stack (and its log) here")
    parser.add_argument("--runs", type=int, default=1, help="repeat every part this often")
    parser.add_argument("--projections", default="spend,history")
    parser.add_argument(
        "--batch-size", type=int, default=EngineConfig().batch_size, help="a rebuild's batches"
    )
    parser.add_argument(
        "--parts", default="read,apply,rebuild", help="comma-separated: read, apply, rebuild"
    )
    asyncio.run(main(parser.parse_args()))
