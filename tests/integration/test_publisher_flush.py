"""``flush`` and the spool's re-send under a steady load, on a real NATS server: each
waits for what was handed over before it, not for a moment with nothing in flight, which
a host recording steadily never gives."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from budget.publisher import EventPublisher
from budget.spool import Spool, SpooledEvent
from events import Topology, encode
from services.embedded import EmbeddedNats

from producing import publisher_for, stored_event_ids
from support import usage_event, varied_events, wait_for

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def steady_load(publisher: EventPublisher) -> AsyncIterator[list[str]]:
    """Events recorded one after the other while inside, as a busy host does (~10,000 a
    second: some are always in flight); the ids of those recorded, in order."""
    recorded: list[str] = []

    async def record() -> None:
        while True:
            event = usage_event()
            await publisher.publish(event)
            recorded.append(str(event.event_id))
            await asyncio.sleep(0)

    task = asyncio.create_task(record())

    async def going() -> bool:
        """the load is on"""
        return len(recorded) >= 100

    try:
        await wait_for(going)
        yield recorded
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_flush_under_a_steady_load_returns_once_what_was_recorded_before_is_acked(
    embedded_nats: EmbeddedNats, private_log: Topology, tmp_path: Path
) -> None:
    publisher = publisher_for(embedded_nats.url, private_log, tmp_path / "spool")
    await publisher.start()
    try:
        async with steady_load(publisher) as recorded:
            before = set(recorded)
            async with asyncio.timeout(10):  # it never returned: the load never paused
                await publisher.flush()
            in_flight = {e.item.event_id for e in publisher._in_flight.values()}
            assert not before & in_flight and len(publisher.spool) == 0  # acked, all
    finally:
        await publisher.close()
    stored = await stored_event_ids(embedded_nats.url, private_log)
    assert sorted(stored) == sorted(recorded)


async def test_the_spool_is_resent_whole_under_a_steady_load(
    embedded_nats: EmbeddedNats, private_log: Topology, tmp_path: Path
) -> None:
    """More than one re-send batch (1,000) comes into the spool (as another process
    sharing its directory spools) while the load is on; each batch's flush returns, so
    the periodic re-send goes on to the end."""
    publisher = publisher_for(embedded_nats.url, private_log, tmp_path / "spool")
    await publisher.start()
    spooled = varied_events(2500)
    subject = private_log.event_subject(spooled[0].SUBJECT)

    async def resent() -> bool:
        """the spool was re-sent to its end"""
        return len(publisher.spool) == 0

    try:
        async with steady_load(publisher) as recorded:
            other = Spool(tmp_path / "spool")
            other.update(put=[SpooledEvent(str(e.event_id), subject, encode(e)) for e in spooled])
            other.close()
            await wait_for(resent, within=15)
    finally:
        await publisher.close()
    stored = await stored_event_ids(embedded_nats.url, private_log)
    assert sorted(stored) == sorted([str(e.event_id) for e in spooled] + recorded)
