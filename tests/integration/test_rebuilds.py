"""A rebuild's life beside the workers, on real NATS and PostgreSQL: on a database no
worker has used yet, beside a hot standby, against a newer rebuild, and when it fails."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

import services.cli
from budget.config import Settings
from events import Topology
from projections.db import connect
from projections.engine.checkpoints import create_version
from projections.engine.isolation import Systemic
from projections.engine.projection import Applied, Connection
from projections.engine.reader import ConsumerGone
from projections.engine.rebuild import rebuild
from projections.spend import SpendProjection
from services.worker import run_projection

from support import budget_process, catch_up, publish, rows, varied_events, wait_for

SPEND_REQUESTS = "SELECT requests FROM spend_totals WHERE scope = 'global' AND period = 'monthly'"


async def waiting_for_writer_lock(db: str, durable: str) -> bool:
    """Whether a worker waits for ``durable``'s single-writer lock (a hot standby)."""
    return await rows(
        db,
        "SELECT count(*) FROM pg_locks, hashtext(%s) AS key WHERE locktype = 'advisory'"
        " AND NOT granted AND classid = ((key::bigint >> 32) & 4294967295)::oid"
        " AND objid = (key::bigint & 4294967295)::oid",
        (f"projection:{durable}",),
    ) == [(1,)]


async def test_a_rebuild_before_any_worker_ran_goes_live_and_workers_follow_it(
    nc: Client, db: str, topology: Topology
) -> None:
    events = varied_events(3)
    await publish(nc, topology, events[:2])

    version = await rebuild(SpendProjection(), nc=nc, database_url=db, topology=topology)

    assert await rows(db, "SELECT name, active_version FROM projection_registry") == [
        ("spend", version)
    ]
    assert await rows(db, SPEND_REQUESTS) == [(2,)]
    await publish(nc, topology, events[2:])
    await catch_up(SpendProjection(), nc, db, topology)  # what a worker opens
    assert await rows(db, SPEND_REQUESTS) == [(3,)]
    assert await rows(db, "SELECT version FROM projection_checkpoints") == [(version,)]


async def test_a_worker_starts_over_what_a_rebuild_on_a_fresh_database_left_before(
    nc: Client, db: str, topology: Topology
) -> None:
    """Earlier releases left a version without a registry row when a rebuild ran first;
    the worker that upgrades drops it rather than failing on its tables at every start."""
    await publish(nc, topology, varied_events(2))
    conn = await connect(db)
    try:
        await create_version(conn, SpendProjection(), 1, indexes=False)
    finally:
        await conn.close()

    await catch_up(SpendProjection(), nc, db, topology)

    assert await rows(db, SPEND_REQUESTS) == [(2,)]


async def test_a_hot_standby_follows_a_swap_and_takes_over_the_live_version(
    nc: Client, db: str, topology: Topology, nats_url: str
) -> None:
    """The standby waited for version 1's lock through the swap, which dropped version 1."""
    settings = Settings(nats_url=nats_url, database_url=db, subject_prefix=topology.prefix)
    events = varied_events(30)
    await publish(nc, topology, events[:20])
    first_stop, second_stop = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(run_projection("spend", nc, settings, first_stop))
    second: asyncio.Task[None] | None = None
    try:

        async def first_caught_up() -> bool:
            """the first worker applied what was published"""
            return await rows(db, "SELECT stream_seq FROM projection_checkpoints") == [(20,)]

        await wait_for(first_caught_up)
        second = asyncio.create_task(run_projection("spend", nc, settings, second_stop))

        async def second_waits_for_v1() -> bool:
            """the second worker waits as the hot standby of spend-v1"""
            return await waiting_for_writer_lock(db, "spend-v1")

        await wait_for(second_waits_for_v1)
        assert await rebuild(SpendProjection(), nc=nc, database_url=db, topology=topology) == 2
        workers = (first, second)

        async def one_waits_for_v2() -> bool:
            """both workers moved to spend-v2, one writing it, the other its standby"""
            for worker in workers:
                if worker.done():
                    worker.result()  # raises what stopped it
                    raise AssertionError("a worker stopped")
            return await waiting_for_writer_lock(db, "spend-v2")

        await wait_for(one_waits_for_v2)
        await publish(nc, topology, events[20:])

        async def all_applied() -> bool:
            """spend-v2 applied every event"""
            return await rows(db, "SELECT stream_seq FROM projection_checkpoints") == [(30,)]

        await wait_for(all_applied)
    finally:
        first_stop.set()
        second_stop.set()
        await asyncio.gather(first, *([second] if second else []))
    assert await rows(db, SPEND_REQUESTS) == [(30,)]


async def test_a_hot_standby_worker_stops_on_sigterm(
    nc: Client, db: str, topology: Topology, nats_url: str
) -> None:
    """It waited in PostgreSQL for the writer lock, deaf to the stop: `budget up` or a
    container runtime had to kill it."""
    await publish(nc, topology, varied_events(2))

    def worker() -> subprocess.Popen[bytes]:
        return budget_process(
            ["worker", "spend"], nats_url=nats_url, database_url=db, topology=topology
        )

    active = worker()
    standby: subprocess.Popen[bytes] | None = None
    try:

        async def active_caught_up() -> bool:
            """the first worker applied what was published"""
            return await rows(db, "SELECT stream_seq FROM projection_checkpoints") == [(2,)]

        await wait_for(active_caught_up, within=60)
        standby = worker()

        async def standing_by() -> bool:
            """the second worker waits as the hot standby of spend-v1"""
            return await waiting_for_writer_lock(db, "spend-v1")

        await wait_for(standing_by, within=60)
        standby.send_signal(signal.SIGTERM)
        assert standby.wait(timeout=30) == 0
        assert active.poll() is None  # the lock it waited for is still held
    finally:
        for process in (active, standby):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)


async def test_a_rebuild_without_the_event_stream_says_to_migrate_and_makes_no_version(
    nc: Client, db: str, topology: Topology, nats_url: str
) -> None:
    await publish(nc, topology, varied_events(2))
    await catch_up(SpendProjection(), nc, db, topology)
    elsewhere = Topology(prefix=f"{topology.prefix}x")  # no streams declared

    cli = budget_process(
        ["projections", "rebuild", "spend"], nats_url=nats_url, database_url=db, topology=elsewhere
    )
    out = cli.communicate(timeout=60)[0].decode()

    assert cli.returncode == 2, out
    assert f"stream {elsewhere.event_stream.name} does not exist; run `budget migrate`" in out
    assert await rows(db, "SELECT version FROM projection_checkpoints") == [(1,)]


class Failing(SpendProjection):
    """The spend projection under its own name, raising on every event (a code fault)."""

    name = "failing"

    def __init__(self) -> None:
        super().__init__("failing", settles_reservations=False)

    async def apply(self, conn: Connection, version: int, batch: Sequence[Applied]) -> None:
        raise ValueError("a bug in the new projection code")


async def test_a_rebuild_that_fails_drops_the_version_it_was_building(
    nc: Client, db: str, topology: Topology
) -> None:
    await publish(nc, topology, varied_events(3))

    with pytest.raises(Systemic, match="a bug in the new projection code"):
        await rebuild(Failing(), nc=nc, database_url=db, topology=topology)

    assert await rows(db, "SELECT name, version FROM projection_checkpoints") == [("failing", 1)]
    tables = await rows(
        db,
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = current_schema() AND table_name LIKE 'failing%%\\_v2'",
    )
    assert tables == []
    consumers = await nc.jetstream().consumers_info(topology.event_stream.name)
    assert [c.name for c in consumers] == []


async def test_a_rebuild_overtaken_by_a_newer_ones_swap_says_so_and_leaves_nothing(
    nc: Client, db: str, topology: Topology, nats_url: str
) -> None:
    """The newer rebuild's swap drops the older one's version while it still runs. Here
    the older one is held before it reads, waiting for its version's writer lock."""
    await publish(nc, topology, varied_events(5))
    await catch_up(SpendProjection(), nc, db, topology)
    holder = await connect(db)
    try:
        await holder.execute("SELECT pg_advisory_lock(hashtext('projection:spend-v2'))")
        older = budget_process(
            ["projections", "rebuild", "spend"],
            nats_url=nats_url,
            database_url=db,
            topology=topology,
        )

        async def older_holds_on() -> bool:
            """the older rebuild made spend-v2 and waits for its lock"""
            return await waiting_for_writer_lock(db, "spend-v2")

        await wait_for(older_holds_on)
        assert await rebuild(SpendProjection(), nc=nc, database_url=db, topology=topology) == 3
    finally:
        await holder.close()  # and with it the lock
    out = older.communicate(timeout=60)[0].decode()

    assert older.returncode == 2, out
    assert (
        "budget: another rebuild (spend-v3) went live first; this one (spend-v2) stopped and"
        " left nothing behind" in out
    )
    assert "Traceback" not in out
    assert await rows(db, "SELECT version FROM projection_checkpoints") == [(3,)]
    assert await rows(db, SPEND_REQUESTS) == [(5,)]


@pytest.mark.parametrize(
    ("stop", "then"),
    [
        (
            Systemic("spend-v2: each of a batch of 3 event(s) raised on its own"),
            "the rebuild stopped and dropped its version: fix the projection and rerun",
        ),
        (
            ConsumerGone("consumer spend-v2: 409 Consumer Deleted"),
            "deleted while the rebuild read it; it stopped and dropped its version",
        ),
    ],
    ids=["systemic", "consumer-gone"],
)
def test_a_rebuild_that_stops_says_why_in_one_line(
    stop: Exception,
    then: str,
    nats_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through the entry point, in this process: the rebuild is made to stop so."""

    async def stopping(*args: Any, **kwargs: Any) -> int:
        raise stop

    for variable in [v for v in os.environ if v.startswith("BUDGET_")]:
        monkeypatch.delenv(variable)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BUDGET_NATS_URL", nats_url)
    monkeypatch.setattr(services.cli, "rebuild", stopping)
    monkeypatch.setattr(sys, "argv", ["budget", "projections", "rebuild", "spend"])
    monkeypatch.setattr(logging, "lastResort", logging.lastResort)  # the CLI silences it
    with pytest.raises(SystemExit) as exited:
        services.cli.main()

    assert exited.value.code == 2
    said = capsys.readouterr().err.splitlines()[-1]  # after the progress bar's
    assert said.startswith(f"budget: {stop}") and said.endswith(then)
