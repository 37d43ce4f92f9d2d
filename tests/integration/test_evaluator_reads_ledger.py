"""The alert evaluator counts the usage ledger's rows: what the usage group has recorded it
neither decodes nor stages, and it waits for a writer that is recording rather than decode
what that writer is about to record; alone, or with the other writer stopped, it records
the usage itself, and counts the same either way."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from nats.aio.client import Client

from events import Topology, utc_now
from projections.alerts import AlertsProjection
from projections.engine.preparer import Preparer
from projections.engine.projection import Applied
from projections.engine.runner import EngineConfig, ProjectionRunner
from projections.history import HistoryProjection
from projections.reports import ReportsProjection
from projections.spend import SpendProjection

from support import ANY_TIME, catch_up, publish, rows, usage_event, wait_for

USAGE_GROUP = (SpendProjection(), HistoryProjection(), ReportsProjection())
TOTALS = {
    "spend": "SELECT sum(cost), sum(requests) FROM spend_buckets WHERE scope = 'user'",
    "alerts": "SELECT sum(cost), sum(requests) FROM alert_spend_buckets WHERE scope = 'user'",
}


@pytest.fixture
def usage_decoded_by_evaluator(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The stream sequences of the usage events a deferring preparer (the evaluator's)
    decoded."""
    decoded: list[int] = []
    original = Preparer.decode

    def counting(self: Preparer, stream_seq: int, *args: Any) -> Any:
        if self._deferred is not None:
            decoded.append(stream_seq)
        return original(self, stream_seq, *args)

    monkeypatch.setattr(Preparer, "decode", counting)
    yield decoded


async def totals(db: str) -> dict[str, list[tuple[Any, ...]]]:
    return {name: await rows(db, query) for name, query in TOTALS.items()}


def calls(count: int) -> list[Any]:
    at = utc_now() - timedelta(minutes=5)
    return [usage_event(at=at, user=f"u{i % 7}", cost="0.25") for i in range(count)]


async def test_after_the_usage_group_the_evaluator_decodes_no_usage(
    nc: Client, db: str, topology: Topology, usage_decoded_by_evaluator: list[int]
) -> None:
    await publish(nc, topology, calls(300))
    await catch_up(USAGE_GROUP, nc, db, topology)
    await catch_up(AlertsProjection(), nc, db, topology)

    assert usage_decoded_by_evaluator == []
    found = await totals(db)
    assert found["alerts"] == found["spend"] != [(None, None)]


async def test_alone_the_evaluator_records_the_usage_itself(
    nc: Client, db: str, topology: Topology, usage_decoded_by_evaluator: list[int]
) -> None:
    """The usage group ran once and stopped: the evaluator, taking the events as a backlog,
    waits for it (it does not move), then decodes and records them; the group, started
    later, reads what it recorded."""
    await publish(nc, topology, calls(10))
    await catch_up(USAGE_GROUP, nc, db, topology)
    await catch_up(AlertsProjection(), nc, db, topology)
    await publish(nc, topology, calls(200))
    quick = EngineConfig(time_bounds=ANY_TIME, ledger_wait=0.2, ledger_backlog=1)
    await catch_up(AlertsProjection(), nc, db, topology, config=quick)

    assert len(usage_decoded_by_evaluator) == 200
    await catch_up(USAGE_GROUP, nc, db, topology)
    found = await totals(db)
    assert found["alerts"] == found["spend"] == [(Decimal("52.50"), 210)]


async def test_live_the_evaluator_waits_for_the_usage_group(
    nc: Client, db: str, topology: Topology, usage_decoded_by_evaluator: list[int]
) -> None:
    """Both live, as under ``budget up``: the evaluator takes each burst only once the
    usage group has recorded it (a generous wait: a slow machine must not decide it; and
    every batch taken for a backlog, as in a catch-up, however small these bursts are)."""
    await publish(nc, topology, calls(1))
    await catch_up(USAGE_GROUP, nc, db, topology)  # the group is a writer of the ledger
    patient = EngineConfig(time_bounds=ANY_TIME, ledger_wait=30.0, ledger_backlog=1)
    runners = [
        ProjectionRunner(p, nc=nc, database_url=db, topology=topology, config=patient)
        for p in (USAGE_GROUP, AlertsProjection())
    ]
    stop = asyncio.Event()
    for runner in runners:
        await runner.open()
    tasks = [asyncio.create_task(runner.run(stop)) for runner in runners]
    try:
        for _ in range(5):
            await publish(nc, topology, calls(40))
            await asyncio.sleep(0.05)

        async def counted_everywhere() -> bool:
            found = await totals(db)
            return found["alerts"] == found["spend"] == [(Decimal("50.25"), 201)]

        await wait_for(counted_everywhere)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for runner in runners:
            await runner.close()
    assert usage_decoded_by_evaluator == []


async def test_a_small_batch_the_ledger_holds_part_of_is_taken_whole(
    nc: Client, db: str, topology: Topology, usage_decoded_by_evaluator: list[int]
) -> None:
    """Live, with the usage group a batch ahead: the evaluator takes what it finds
    whole, reading the part the group recorded and decoding the rest, rather than only
    the recorded part (then waiting for the group's next commit, batch after batch)."""
    await publish(nc, topology, calls(30))
    await catch_up(USAGE_GROUP, nc, db, topology)
    await publish(nc, topology, calls(20))
    runner = ProjectionRunner(
        AlertsProjection(),
        nc=nc,
        database_url=db,
        topology=topology,
        config=EngineConfig(time_bounds=ANY_TIME),
    )
    await runner.open()
    try:
        reader = runner.reader
        assert reader is not None

        async def all_delivered() -> bool:
            """the reader holds all 50 events"""
            return reader.buffered == 50

        await wait_for(all_delivered)
        batch = await runner.take(500, 0, wait=1)
        assert [d.stream_seq for d in batch] == list(range(1, 51))
        assert usage_decoded_by_evaluator == list(range(31, 51))
        deferred = [
            d.stream_seq
            for d in batch
            if isinstance(d.prepared, Applied) and d.prepared.is_deferred
        ]
        assert deferred == list(range(1, 31))
    finally:
        await runner.close()
