"""How far the running usage projections have committed, for the benchmarks: their
checkpoints (the active versions') against the event stream's last sequence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import nats

from budget.config import Settings
from events import UsageRecorded
from projections.db import connect
from projections.engine.projection import Connection
from projections.registry import worker_projections
from services.stack import SERVICES

__all__ = [
    "Checkpoints",
    "check_workers",
    "committed",
    "stream_last_seq",
    "usage_readers",
    "wait_until_committed",
]


def check_workers(workers: Sequence[str]) -> None:
    """Refuse a name neither ``budget worker`` nor the stack's services accept."""
    for name in workers:
        if name not in SERVICES:
            try:
                worker_projections(name)
            except ValueError as exc:
                raise SystemExit(f"{exc}; or a service: {', '.join(SERVICES)}") from None


def usage_readers(workers: Sequence[str]) -> list[str]:
    """The projections that read usage events in these workers (a group worker's too)."""
    return sorted(
        {
            projection.name
            for name in workers
            if name not in SERVICES
            for projection in worker_projections(name)
            if UsageRecorded in projection.event_types
        }
    )


class Checkpoints:
    """The checkpoints of the ``usage_readers`` of the given workers (the lowest of them,
    or one reader's), polled in the background."""

    def __init__(self, database_url: str, workers: Sequence[str]) -> None:
        self.database_url = database_url
        self.readers = usage_readers(workers)
        self.samples: list[tuple[float, dict[str, int]]] = []

    async def positions(self, conn: Connection) -> dict[str, int]:
        """Each reader's checkpoint (a reader without one yet counts as 0)."""
        cursor = await conn.execute(
            "SELECT c.name, c.stream_seq FROM projection_checkpoints c"
            " JOIN projection_registry r ON r.name = c.name AND r.active_version = c.version"
            " WHERE c.name = ANY(%s)",
            (self.readers,),
        )
        found = {name: int(seq) for name, seq in await cursor.fetchall()}
        return {reader: found.get(reader, 0) for reader in self.readers}

    async def lowest(self, conn: Connection) -> int:
        """The lowest checkpoint of the readers."""
        return min((await self.positions(conn)).values(), default=0)

    async def poll(self, stop: asyncio.Event, interval: float = 0.005) -> None:
        conn = await connect(self.database_url)
        try:
            while not stop.is_set():
                self.samples.append((time.perf_counter(), await self.positions(conn)))
                await asyncio.sleep(interval)
        finally:
            await conn.close()

    def committed_times(self, first: int, count: int, reader: str | None) -> list[float]:
        """When every reader (or ``reader``) was first seen past each of the ``count``
        sequences from ``first`` (samples are in time order, positions never go back)."""
        times: list[float] = []
        samples = iter(self.samples)
        at, position = -1.0, -1
        for seq in range(first, first + count):
            while position < seq:
                sample = next(samples, None)
                assert sample is not None, f"sequence {seq} was never seen committed"
                at, positions = sample
                position = positions[reader] if reader else min(positions.values(), default=0)
            times.append(at)
        return times


async def committed(
    checkpoints: Checkpoints, conn: Connection, seq: int, interval: float = 0.005
) -> int:
    """Wait until every reader has committed ``seq``; the lowest checkpoint then."""
    while (lowest := await checkpoints.lowest(conn)) < seq:  # noqa: ASYNC110 - polling the database
        await asyncio.sleep(interval)
    return lowest


async def wait_until_committed(checkpoints: Checkpoints, seq: int) -> float:
    """The time every reader has committed ``seq``."""
    conn = await connect(checkpoints.database_url)
    try:
        await committed(checkpoints, conn, seq)
        return time.perf_counter()
    finally:
        await conn.close()


async def stream_last_seq(nats_url: str, settings: Settings) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(settings.topology.event_stream.name)
        return int(info.state.last_seq)
    finally:
        await nc.close()
