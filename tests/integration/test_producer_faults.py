"""The producer (``budget/publisher.py``) under faults of NATS and of its spool's disk:
each event is stored once in the end, and none is lost on the way."""

from __future__ import annotations

import logging
from pathlib import Path

import nats
import pytest

from events import Topology
from projections.engine.log import declare_streams
from services.embedded import EmbeddedNats

from producing import bulky, hung, publisher_for, stored_event_ids
from support import disk_full, varied_events, wait_for


def spool_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "budget.publisher" and r.levelno == logging.ERROR
    ]


async def test_events_expiring_while_the_spool_disk_is_full_stay_in_memory_until_it_has_room(
    embedded_nats: EmbeddedNats,
    private_log: Topology,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """NATS hangs with events in flight, then dies with them unread, while the spool's disk
    is full: the events stay in memory (an error says why), are spooled once the disk has
    room, and re-sent once NATS is back. Each is stored once."""
    events = bulky(varied_events(6))
    publisher = publisher_for(embedded_nats.url, private_log, tmp_path / "spool")
    await publisher.start()
    await publisher.publish(events[0])
    await publisher.flush()

    async def spool_failed() -> bool:
        """the publisher said that the spool failed"""
        return bool(spool_failures(caplog))

    full = disk_full(publisher.spool)
    with caplog.at_level(logging.ERROR, logger="budget.publisher"), full, hung(embedded_nats):
        for event in events[1:]:
            await publisher.publish(event)
        await wait_for(spool_failed)
        embedded_nats.kill()  # with the events unread
    assert "disk is full" in spool_failures(caplog)[0]

    async def all_spooled() -> bool:
        """the events in memory were spooled once the disk had room"""
        return len(publisher.spool) == len(events) - 1

    await wait_for(all_spooled)
    embedded_nats.start()

    async def spool_empty() -> bool:
        """the reconnected publisher re-sent the spool"""
        return len(publisher.spool) == 0

    await wait_for(spool_empty)
    await publisher.close()
    stored = await stored_event_ids(embedded_nats.url, private_log)
    assert sorted(stored) == sorted(str(e.event_id) for e in events)


async def test_an_event_jetstream_refuses_while_the_spool_disk_is_full_is_spooled_once_it_has_room(
    embedded_nats: EmbeddedNats,
    topology: Topology,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No stream takes the event yet (JetStream answers "no responders") and the spool's
    disk is full: the event stays in memory, is spooled once the disk has room, and
    stored once the stream exists."""
    event = bulky(varied_events(1))[0]
    publisher = publisher_for(embedded_nats.url, topology, tmp_path / "spool")
    await publisher.start()

    async def spool_failed() -> bool:
        """the publisher said that the spool failed"""
        return bool(spool_failures(caplog))

    with caplog.at_level(logging.ERROR, logger="budget.publisher"), disk_full(publisher.spool):
        await publisher.publish(event)
        await wait_for(spool_failed)

    async def spooled() -> bool:
        """the refused event was spooled once the disk had room"""
        return len(publisher.spool) == 1

    await wait_for(spooled)
    client = await nats.connect(embedded_nats.url)
    await declare_streams(client.jetstream(), topology)
    await client.close()

    async def spool_empty() -> bool:
        """the spool was re-sent to the new stream"""
        return len(publisher.spool) == 0

    await wait_for(spool_empty)
    await publisher.close()
    assert await stored_event_ids(embedded_nats.url, topology) == [str(event.event_id)]
