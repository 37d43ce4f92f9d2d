"""Projections that share one consumer (``budget worker usage``: spend, history, reports)
on real NATS and PostgreSQL: the group gives the rows each gives alone, each member keeps
its own checkpoint and version, and a member rebuilt alone, behind or ahead of the
group, reads and writes the one usage ledger to the same verdicts."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

import pytest
from nats.aio.client import Client

from budget.config import Settings
from events import Event, Topology, UsageRecorded
from projections.db import connect
from projections.engine.checkpoints import ensure_projection
from projections.engine.projection import Projection, physical
from projections.engine.rebuild import rebuild
from projections.engine.writer import VersionWriter
from projections.registry import GROUPS, worker_projections
from services.worker import run_projection

from ledger_logs import correction
from support import catch_up, publish, rows, varied_events, wait_for

GROUP = worker_projections("usage")


def log_with_fixes(count: int) -> list[Event]:
    """Usage, corrections of some of it, and one correction twice."""
    usage = varied_events(count)
    fixes = [correction(event, Decimal("0.5")) for event in usage[3::40]]
    return [*usage, *fixes, fixes[0]]


async def snapshot(db: str, projection: Projection, version: int) -> list[list[object]]:
    return [
        sorted(
            await rows(db, f"SELECT * FROM {physical(table, version)}"),
            key=lambda row: [str(value) for value in row],
        )
        for table in projection.tables
    ]


async def checkpoints(db: str) -> dict[str, int]:
    found = await rows(
        db,
        "SELECT c.name, c.stream_seq FROM projection_checkpoints c"
        " JOIN projection_registry r ON r.name = c.name AND r.active_version = c.version",
    )
    return {name: seq for name, seq in found if name in GROUPS["usage"]}


async def test_the_group_gives_the_rows_each_projection_gives_alone(
    nc: Client, db: str, topology: Topology
) -> None:
    events = log_with_fixes(300)
    # a re-send after JetStream's duplicate window: the same event id, a new sequence
    await publish(nc, topology, [*events, events[7]], msg_id=False)
    await catch_up(GROUP, nc, db, topology)
    last = (await nc.jetstream().stream_info(topology.event_stream.name)).state.last_seq
    assert await checkpoints(db) == dict.fromkeys(GROUPS["usage"], last)
    assert await rows(db, "SELECT count(*) FROM usage_history") == [(300,)]
    for projection in GROUP:
        alone = await rebuild(projection, nc=nc, database_url=db, topology=topology, swap=False)
        grouped, rebuilt = await snapshot(db, projection, 1), await snapshot(db, projection, alone)
        assert all(grouped), f"{projection.name}: the group filled no rows"
        assert rebuilt == grouped, projection.name


async def test_a_rebuild_ahead_of_the_group_records_what_the_group_then_reads(
    nc: Client, db: str, topology: Topology
) -> None:
    first = varied_events(100)
    await publish(nc, topology, first)
    await catch_up(GROUP, nc, db, topology)
    # more usage, corrections of the first events and a late re-send of one of them
    fixes = [correction(event, Decimal("0.25")) for event in first[::10]]
    later: list[Event] = [*varied_events(100, start=first[-1].occurred_at), *fixes, fixes[1]]
    await publish(nc, topology, later, msg_id=False)
    spend = GROUP[0]
    ahead = await rebuild(spend, nc=nc, database_url=db, topology=topology, swap=False)
    await catch_up(GROUP, nc, db, topology)
    assert await snapshot(db, spend, ahead) == await snapshot(db, spend, 1)
    corrected = await rows(
        db,
        "SELECT count(*) FROM usage_history WHERE cost = 0.25",
    )
    assert corrected == [(len(fixes),)]


async def test_the_group_worker_follows_a_member_rebuilt_and_swapped(
    nc: Client, db: str, topology: Topology, nats_url: str
) -> None:
    settings = Settings(nats_url=nats_url, database_url=db, subject_prefix=topology.prefix)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_projection("usage", nc, settings, stop))
    try:
        events = varied_events(50)
        await publish(nc, topology, events)

        async def caught_up() -> bool:
            """every member of the group committed the whole log"""
            last = (await nc.jetstream().stream_info(topology.event_stream.name)).state.last_seq
            return set((await checkpoints(db)).values()) == {last}

        await wait_for(caught_up)
        history = GROUP[1]
        assert await rebuild(history, nc=nc, database_url=db, topology=topology) == 2
        more: list[UsageRecorded] = varied_events(20, start=events[-1].occurred_at)
        await publish(nc, topology, more)
        await wait_for(caught_up)
        assert await rows(db, "SELECT count(*) FROM usage_history") == [(70,)]
        versions = await rows(db, "SELECT name, active_version FROM projection_registry")
        assert ("history", 2) in versions and ("spend", 1) in versions
    finally:
        stop.set()
        await worker


async def test_a_second_writer_of_a_version_waits_saying_which_backend_holds_it(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker whose projection version another worker writes (a hot standby, or a group
    worker beside a worker of one of its members) waits for the lock, and says so."""
    projection = worker_projections("spend")[0]
    holder, waiter = await connect(db), await connect(db)
    try:
        version = await ensure_projection(holder, projection)
        await VersionWriter(projection, version).take_over(holder)
        with caplog.at_level(logging.WARNING, logger="projections.engine.writer"):
            waiting = asyncio.create_task(VersionWriter(projection, version).take_over(waiter))

            async def said_so() -> bool:
                """the waiting writer logged whom it waits for"""
                return any("hot standby" in r.getMessage() for r in caplog.records)

            await wait_for(said_so, within=10, interval=0.02)
        assert not waiting.done()
        [message] = [r.getMessage() for r in caplog.records if "hot standby" in r.getMessage()]
        assert f"spend-v{version} is written by another worker" in message
        assert f"pid {holder.info.backend_pid}" in message
        await holder.close()  # the active worker goes: the standby takes over
        await asyncio.wait_for(waiting, timeout=10)
    finally:
        await holder.close()
        await waiter.close()
