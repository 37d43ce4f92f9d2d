"""A fault that is no one event's (a code bug, stored data that no longer validates) stops
the consumer (``Systemic``: the worker retries with backoff) and loses nothing; one bad
event among good ones is still dead-lettered alone, and bad events that make up a batch
of their own are too once events after them apply; corrections of unknown events are
refused without re-applying their batch event by event (real NATS and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client

import services.worker
from budget.config import Settings
from events import Topology
from projections.engine.deadletter import recent_dead_letters
from projections.engine.isolation import Systemic
from projections.engine.projection import Applied, Connection
from projections.engine.runner import EngineConfig
from projections.spend import SpendProjection
from services.liveness import Liveness, Loop
from services.worker import run_projection

from enforcement import stack_settings
from ledger_logs import correction
from support import ANY_TIME, catch_up, publish, rows, usage_event, wait_for

TOTALS = "SELECT sum(cost), sum(requests) FROM faulty_buckets WHERE scope = 'global'"


class Faulty(SpendProjection):
    """The spend projection under its own name, raising on every event of ``poisoned``
    users (all of them while ``broken``, or for the first ``heals_after`` tries to apply);
    ``past_a_limit``: instead, its statement for such an event passes one of PostgreSQL's
    limits (SQLSTATE class 54), as a value too long for an index row does."""

    name = "faulty"

    def __init__(
        self,
        *,
        broken: bool = False,
        poisoned: Sequence[str] = (),
        past_a_limit: bool = False,
        heals_after: int = 0,
    ) -> None:
        super().__init__("faulty", settles_reservations=False)
        self.broken, self.poisoned, self.past_a_limit = broken, set(poisoned), past_a_limit
        self.failing_tries = heals_after

    async def apply(self, conn: Connection, version: int, batch: Sequence[Applied]) -> None:
        if self.failing_tries:
            self.failing_tries -= 1
            raise ValueError("stored policy no longer validates (for a while)")
        for applied in batch:
            user = getattr(applied.event, "user_id", None)
            if self.broken or user in self.poisoned:
                if self.past_a_limit:
                    await conn.execute("SELECT array_fill(1, ARRAY[200000000])")
                raise ValueError(f"stored policy no longer validates (event of {user})")
        await super().apply(conn, version, batch)


@contextlib.asynccontextmanager
async def worker_running(
    faulty: Faulty,
    nc: Client,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    loop: Loop | None = None,
) -> AsyncIterator[asyncio.Task[None]]:
    """``budget worker`` running ``faulty`` as its projection until the block ends (a turn
    of ``loop`` each batch, if given)."""
    monkeypatch.setattr(services.worker, "worker_projections", lambda name: [faulty])
    stop = asyncio.Event()
    run = run_projection("faulty", nc, settings, stop, loop)
    worker = loop.start(run) if loop is not None else asyncio.create_task(run)
    try:
        yield worker
    finally:
        stop.set()
        await worker


async def test_a_fault_every_event_of_a_batch_hits_stops_the_consumer_and_loses_nothing(
    nc: Client, db: str, topology: Topology
) -> None:
    calls = [usage_event(cost="1", user=user) for user in ("alice", "bob", "carol")]
    await publish(nc, topology, calls)

    with pytest.raises(Systemic, match="stored policy no longer validates"):
        await catch_up(Faulty(broken=True), nc, db, topology)

    assert await recent_dead_letters(nc.jetstream(), topology) == []
    assert await rows(db, TOTALS) == [(None, None)]
    await catch_up(Faulty(), nc, db, topology)  # fixed and restarted: every call counted
    assert await rows(db, TOTALS) == [(3, 3)]


async def test_a_worker_whose_projection_fails_on_every_event_reports_it_and_retries(
    nc: Client,
    nats_url: str,
    db: str,
    topology: Topology,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``budget worker`` running it: the fault is reported on the health check (failing,
    then stalled) while the worker backs off and tries again, in the same process, and
    once the fault is gone every event is counted; nothing was dead-lettered."""
    faulty = Faulty(broken=True)
    settings = stack_settings(nats_url, db, topology, tmp_path)
    await publish(nc, topology, [usage_event(cost="1", user=u) for u in ("alice", "bob")])
    liveness = Liveness()
    loop = liveness.loop("worker faulty", stall_after=1.0)
    async with worker_running(faulty, nc, settings, monkeypatch, loop) as worker:

        async def reported() -> bool:
            """the worker is reported stalled by the projection's fault"""
            problems = liveness.problems()
            return len(problems) == 1 and "stored policy no longer validates" in problems[0]

        await wait_for(reported)
        assert liveness.problems()[0].startswith("worker faulty stalled: failing for")
        assert not worker.done()
        assert await recent_dead_letters(nc.jetstream(), topology) == []
        faulty.broken = False  # fixed

        async def counted() -> bool:
            """the worker counted both calls and is healthy again"""
            return await rows(db, TOTALS) == [(2, 2)] and liveness.problems() == []

        await wait_for(counted)


async def test_one_event_the_projection_raises_on_is_dead_lettered_and_the_rest_counted(
    nc: Client, db: str, topology: Topology
) -> None:
    calls = [usage_event(cost="1", user=user) for user in ("alice", "mallory", "carol")]
    await publish(nc, topology, calls)

    await catch_up(Faulty(poisoned=["mallory"]), nc, db, topology)

    letters = await recent_dead_letters(nc.jetstream(), topology)
    assert [(letter.consumer, letter.original_seq) for letter in letters] == [("faulty-v1", 2)]
    assert "stored policy no longer validates (event of mallory)" in letters[0].reason
    assert await rows(db, TOTALS) == [(2, 2)]


async def test_a_fault_that_clears_while_a_batch_is_isolated_dead_letters_nothing(
    nc: Client, db: str, topology: Topology
) -> None:
    """The batch fails whole (applied as is, then in a savepoint), then its first event
    alone; the fault is mended before the second applies: the first was not to blame, so
    it is tried again and counted."""
    await publish(nc, topology, [usage_event(cost="1", user=u) for u in ("alice", "bob")])

    await catch_up(Faulty(heals_after=3), nc, db, topology)

    assert await recent_dead_letters(nc.jetstream(), topology) == []
    assert await rows(db, TOTALS) == [(2, 2)]


async def test_bad_events_that_fill_a_batch_alone_are_dead_lettered_once_others_follow(
    nc: Client, db: str, topology: Topology
) -> None:
    """Two events the projection raises on, read as a batch of their own (batches of 2),
    look like a broken projection: the runner tries them with what follows, which applies,
    so they are the events' own faults. With nothing after them the fault stands and
    nothing is lost until an event comes."""
    faulty = Faulty(poisoned=["mallory", "trudy"])
    config = EngineConfig(time_bounds=ANY_TIME, batch_size=2)
    await publish(nc, topology, [usage_event(cost="1", user=u) for u in ("mallory", "trudy")])

    with pytest.raises(Systemic, match="event of mallory"):
        await catch_up(faulty, nc, db, topology, config=config)
    assert await recent_dead_letters(nc.jetstream(), topology) == []

    await publish(nc, topology, [usage_event(cost="1", user=u) for u in ("alice", "carol")])
    await catch_up(faulty, nc, db, topology, config=config)

    letters = await recent_dead_letters(nc.jetstream(), topology)
    assert sorted((letter.consumer, letter.original_seq) for letter in letters) == [
        ("faulty-v1", 1),
        ("faulty-v1", 2),
    ]
    assert all("stored policy no longer validates" in letter.reason for letter in letters)
    assert await rows(db, TOTALS) == [(2, 2)]


async def test_a_fault_on_a_batch_of_one_stands_until_an_event_after_it_applies(
    nc: Client, db: str, topology: Topology
) -> None:
    """At low traffic each batch holds one event: a fault of the projection on it must not
    dead-letter call after call. It stands (nothing lost) until an event after it applies,
    which makes it that event's own."""
    faulty = Faulty(poisoned=["mallory"])
    config = EngineConfig(time_bounds=ANY_TIME, batch_size=1)
    await publish(nc, topology, [usage_event(cost="1", user="mallory")])

    with pytest.raises(Systemic, match="event of mallory"):
        await catch_up(faulty, nc, db, topology, config=config)
    assert await recent_dead_letters(nc.jetstream(), topology) == []

    await publish(nc, topology, [usage_event(cost="1", user="alice")])
    await catch_up(faulty, nc, db, topology, config=config)

    letters = await recent_dead_letters(nc.jetstream(), topology)
    assert [(letter.consumer, letter.original_seq) for letter in letters] == [("faulty-v1", 1)]
    assert await rows(db, TOTALS) == [(1, 1)]


async def test_a_worker_takes_a_lone_events_fault_for_its_own_once_it_has_stood_long(
    nc: Client,
    nats_url: str,
    db: str,
    topology: Topology,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a quiet log nothing may follow the event to tell: past ``LONE_FAULT_PATIENCE``
    (none here) the worker dead-letters it and goes on, rather than stall for days."""
    monkeypatch.setattr(services.worker, "LONE_FAULT_PATIENCE", 0.0)
    settings = stack_settings(nats_url, db, topology, tmp_path)
    await publish(nc, topology, [usage_event(cost="1", user="mallory")])
    async with worker_running(Faulty(poisoned=["mallory"]), nc, settings, monkeypatch):

        async def dead_lettered() -> bool:
            """the worker dead-lettered the lone event after its fault stood"""
            letters = await recent_dead_letters(nc.jetstream(), topology)
            return [letter.original_seq for letter in letters] == [1]

        await wait_for(dead_lettered, within=30)
        await publish(nc, topology, [usage_event(cost="1", user="alice")])

        async def counted() -> bool:
            """the worker went on and counted the next call"""
            return await rows(db, TOTALS) == [(1, 1)]

        await wait_for(counted, within=30)


async def test_an_event_past_a_database_limit_is_dead_lettered_and_the_rest_counted(
    nc: Client, db: str, topology: Topology
) -> None:
    """Refused data, not an outage: retrying it forever would stop the consumer."""
    calls = [usage_event(cost="1", user=user) for user in ("alice", "mallory", "carol")]
    await publish(nc, topology, calls)

    await catch_up(Faulty(poisoned=["mallory"], past_a_limit=True), nc, db, topology)

    letters = await recent_dead_letters(nc.jetstream(), topology)
    assert [(letter.consumer, letter.original_seq) for letter in letters] == [("faulty-v1", 2)]
    assert "array size exceeds" in letters[0].reason
    assert await rows(db, TOTALS) == [(2, 2)]


class Counting(SpendProjection):
    """The spend projection under its own name, recording the size of each batch it is
    asked to apply."""

    name = "counting"

    def __init__(self) -> None:
        super().__init__("counting", settles_reservations=False)
        self.batches: list[int] = []

    async def apply(self, conn: Connection, version: int, batch: Sequence[Applied]) -> None:
        self.batches.append(len(batch))
        await super().apply(conn, version, batch)


async def test_unknown_corrections_are_refused_without_reapplying_the_batch_event_by_event(
    nc: Client, db: str, topology: Topology
) -> None:
    known = usage_event(cost="5")
    never_recorded = [usage_event(cost="1") for _ in range(2)]
    log = [known, *(correction(e, Decimal(0)) for e in never_recorded), usage_event(cost="3")]
    log.insert(2, correction(known, Decimal(2)))
    await publish(nc, topology, log)
    projection = Counting()

    await catch_up(projection, nc, db, topology)

    # the shared ledger refuses the two at once; the projection is asked to apply each of
    # the other three once (a fetch may return the log in one batch or in two)
    assert sum(projection.batches) == 3
    letters = await recent_dead_letters(nc.jetstream(), topology)
    assert sorted(letter.original_seq or 0 for letter in letters) == [2, 4]
    assert await rows(
        db, "SELECT sum(cost), sum(requests) FROM counting_buckets WHERE scope = 'global'"
    ) == [(5, 2)]
