"""The producer (``budget/publisher.py``) under faults of NATS and of its spool's disk:
each event is stored once in the end, and none is lost on the way."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import nats
import pytest

from budget.config import Settings
from budget.pricing import get_pricing_registry
from budget.publisher import NotStored, SpoolFailing
from budget.spool import Spool, SpooledEvent
from budget.tracker import UsageTracker
from events import Topology, UsageRecorded, encode
from projections.engine.log import declare_streams
from services.embedded import EmbeddedNats

from producing import (
    bulky,
    hung,
    publisher_for,
    spool_commits,
    spool_locked,
    stored_event_ids,
    stored_once_resent,
    stored_once_sent,
)
from support import disk_full, varied_events, wait_for


def spool_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The errors logged about the spool failing."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("budget.") and r.levelno == logging.ERROR and "spool" in r.getMessage()
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
    with caplog.at_level(logging.ERROR, logger="budget"), full, hung(embedded_nats):
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

    stored = await stored_once_resent(publisher, embedded_nats.url, private_log)
    assert stored == sorted(str(e.event_id) for e in events)


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

    with caplog.at_level(logging.ERROR, logger="budget"), disk_full(publisher.spool):
        await publisher.publish(event)
        await wait_for(spool_failed)

    async def spooled() -> bool:
        """the refused event was spooled once the disk had room"""
        return len(publisher.spool) == 1

    await wait_for(spooled)
    client = await nats.connect(embedded_nats.url)
    await declare_streams(client.jetstream(), topology)
    await client.close()

    stored = await stored_once_resent(publisher, embedded_nats.url, topology)
    assert stored == [str(event.event_id)]


async def test_events_recorded_while_nats_is_down_are_spooled_off_the_loop_together(
    embedded_nats: EmbeddedNats, private_log: Topology, tmp_path: Path
) -> None:
    """While NATS is down, ``publish`` hands the event over and returns, even while
    another process holds the spool's write lock (the commit waits in a worker thread,
    not on the loop); events handed over together are spooled in one commit."""
    events = varied_events(20)
    spool = tmp_path / "spool"
    embedded_nats.kill()
    publisher = publisher_for(embedded_nats.url, private_log, spool)
    await publisher.start()
    with spool_locked(spool):
        for event in events:
            await publisher.publish(event)
    await publisher.flush()
    assert len(publisher.spool) == len(events)
    assert spool_commits(spool) == 1
    embedded_nats.start()

    stored = await stored_once_resent(publisher, embedded_nats.url, private_log)
    assert stored == sorted(str(e.event_id) for e in events)


async def test_events_expiring_from_a_hung_server_are_spooled_off_the_loop(
    embedded_nats: EmbeddedNats,
    private_log: Topology,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """NATS hangs (the connection up, nothing answered): the events in flight expire and
    are spooled in a worker thread, so the loop runs on while another process holds the
    spool's write lock, and no commit fails for it. Once NATS answers again, each event
    is stored once (the re-send of the spool is a duplicate JetStream drops)."""
    events = varied_events(10)
    spool = tmp_path / "spool"
    publisher = publisher_for(embedded_nats.url, private_log, spool)
    await publisher.start()

    async def expired() -> bool:
        """the events in flight expired"""
        return any("unacknowledged" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.WARNING, logger="budget"), hung(embedded_nats):
        with spool_locked(spool):
            for event in events:
                await publisher.publish(event)
            await wait_for(expired)
        await publisher.flush()
        assert len(publisher.spool) == len(events)
    assert not spool_failures(caplog)

    stored = await stored_once_resent(publisher, embedded_nats.url, private_log)
    assert stored == sorted(str(e.event_id) for e in events)


async def test_with_nats_down_and_the_spool_disk_full_events_wait_in_memory_up_to_the_limit(
    embedded_nats: EmbeddedNats,
    private_log: Topology,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """NATS is down and the spool's disk full: ``max_in_flight`` events wait in memory
    (an error says why), the next one raises ``SpoolFailing``, and those that waited are
    spooled once the disk has room, then stored once NATS is back."""
    events = bulky(varied_events(11))
    embedded_nats.kill()
    publisher = publisher_for(embedded_nats.url, private_log, tmp_path / "spool", max_in_flight=10)
    await publisher.start()
    with caplog.at_level(logging.ERROR, logger="budget"), disk_full(publisher.spool):
        for event in events[:10]:
            await publisher.publish(event)
        with pytest.raises(SpoolFailing, match="disk is full"):
            await publisher.publish(events[10])
    assert spool_failures(caplog)
    await publisher.flush()
    assert len(publisher.spool) == 10
    embedded_nats.start()

    stored = await stored_once_resent(publisher, embedded_nats.url, private_log)
    assert stored == sorted(str(e.event_id) for e in events[:10])


async def test_a_publisher_started_while_nats_is_down_connects_soon_after_it_is_up(
    embedded_nats: EmbeddedNats, private_log: Topology, tmp_path: Path
) -> None:
    """Started while NATS is down, the publisher keeps trying to connect (not once per
    ``flush_interval``, 300 s by default) and, connected, sends what it spooled."""
    events = varied_events(20)
    embedded_nats.kill()
    publisher = publisher_for(
        embedded_nats.url, private_log, tmp_path / "spool", flush_interval=300
    )
    await publisher.start()
    for event in events:
        await publisher.publish(event)
    await publisher.flush()
    assert len(publisher.spool) == len(events)
    embedded_nats.start()

    async def spool_sent() -> bool:
        """the publisher connected and sent its spool"""
        return publisher.connected and len(publisher.spool) == 0

    await wait_for(spool_sent)
    await publisher.close()
    stored = await stored_event_ids(embedded_nats.url, private_log)
    assert sorted(stored) == sorted(str(e.event_id) for e in events)


def with_tag(event: UsageRecorded, size: int) -> UsageRecorded:
    """``event`` with a tag of ``size`` bytes (and a new id)."""
    fields = event.model_dump() | {"event_id": uuid.uuid4(), "tags": {"prompt": "x" * size}}
    return UsageRecorded.model_validate(fields)


async def test_publish_refuses_an_event_larger_than_nats_takes_with_its_headers(
    embedded_nats: EmbeddedNats, private_log: Topology, tmp_path: Path
) -> None:
    """An event within the server's ``max_payload`` but for its header (nats-py lets it
    through; the server would drop the connection) raises ``ValueError`` naming its size
    and the limit; the publisher goes on with the next event."""
    publisher = publisher_for(embedded_nats.url, private_log, tmp_path / "spool")
    await publisher.start()
    assert publisher.client is not None
    limit = publisher.client.max_payload
    first, after = varied_events(2)
    untagged = len(encode(with_tag(first, 0)))
    borderline = with_tag(first, limit - 10 - untagged)
    assert len(encode(borderline)) == limit - 10
    with pytest.raises(ValueError, match=f"more than the NATS server takes \\({limit} bytes"):
        await publisher.publish(borderline)
    await publisher.publish(after)
    await publisher.flush()
    assert len(publisher.spool) == 0
    await publisher.close()
    assert await stored_event_ids(embedded_nats.url, private_log) == [str(after.event_id)]


async def test_an_event_too_large_spooled_while_nats_was_down_is_set_aside_not_resent(
    embedded_nats: EmbeddedNats,
    private_log: Topology,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A publisher that never reached NATS cannot know its limit and spools an event too
    large; when the spool is sent, that event goes to the spool's dead letters (an error
    says so) and the rest, more than a batch, is sent at once behind it."""
    events = varied_events(1200)
    huge = with_tag(events[0], 1_100_000)
    embedded_nats.kill()
    publisher = publisher_for(
        embedded_nats.url, private_log, tmp_path / "spool", flush_interval=300
    )
    await publisher.start()
    for event in [huge, *events]:
        await publisher.publish(event)
    await publisher.flush()
    assert len(publisher.spool) == 1 + len(events)
    with caplog.at_level(logging.ERROR, logger="budget"):
        embedded_nats.start()

        async def spool_sent() -> bool:
            """the spool was sent but for the event too large"""
            return len(publisher.spool) == 0

        await wait_for(spool_sent)
    [dead] = publisher.spool.dead_letters()
    assert dead.event.event_id == str(huge.event_id)
    assert "max_payload" in dead.reason
    assert any(str(huge.event_id) in r.getMessage() for r in caplog.records)
    await publisher.close()
    stored = await stored_event_ids(embedded_nats.url, private_log)
    assert sorted(stored) == sorted(str(e.event_id) for e in events)


async def test_with_no_usable_spool_directory_events_wait_in_memory_until_nats_is_up(
    embedded_nats: EmbeddedNats,
    private_log: Topology,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The spool's directory lies under a file: the publisher starts all the same; while
    NATS is down its events wait in memory (an error names the spool and the cause), and
    they are sent once NATS is up."""
    events = varied_events(5)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    embedded_nats.kill()
    publisher = publisher_for(embedded_nats.url, private_log, blocker / "spool")
    await publisher.start()

    async def spool_failed() -> bool:
        """the publisher said that the spool failed"""
        return bool(spool_failures(caplog))

    with caplog.at_level(logging.ERROR, logger="budget"):
        for event in events:
            await publisher.publish(event)
        await wait_for(spool_failed)
    assert "Not a directory" in spool_failures(caplog)[0]
    assert str(blocker) in spool_failures(caplog)[0]
    embedded_nats.start()
    stored = await stored_once_sent(publisher, embedded_nats.url, private_log, events)
    assert stored == sorted(str(e.event_id) for e in events)


async def test_events_a_failing_spool_holds_when_nats_comes_back_are_sent_after_that_commit(
    embedded_nats: EmbeddedNats,
    private_log: Topology,
    tmp_path: Path,
) -> None:
    """NATS comes back while a commit to a failing spool holds the events waiting in
    memory (so connecting takes none of them back): once that commit fails, they are sent,
    not left to a spool that keeps failing until the next reconnection."""
    events = varied_events(5)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    embedded_nats.kill()
    publisher = publisher_for(embedded_nats.url, private_log, blocker / "spool")
    committing, reconnected = threading.Event(), threading.Event()
    failing_update = publisher.spool.update

    def update_once_reconnected(**changes: Any) -> None:
        committing.set()
        reconnected.wait(timeout=60)
        failing_update(**changes)

    publisher.spool.update = update_once_reconnected  # type: ignore[method-assign]
    await publisher.start()
    for event in events:
        await publisher.publish(event)
    assert await asyncio.to_thread(committing.wait, 30), "no commit to the spool began"
    embedded_nats.start()

    async def publisher_connected() -> bool:
        """the publisher connected to NATS again"""
        return publisher.connected

    await wait_for(publisher_connected)
    reconnected.set()
    stored = await stored_once_sent(publisher, embedded_nats.url, private_log, events)
    assert stored == sorted(str(e.event_id) for e in events)


@pytest.mark.parametrize("nats_down", [False, True], ids=["nats-refusing", "nats-down"])
async def test_flush_with_nowhere_to_store_events_raises_how_many_and_why_and_loses_none(
    embedded_nats: EmbeddedNats, topology: Topology, tmp_path: Path, nats_down: bool
) -> None:
    """NATS refuses the events (no stream takes them yet) or is down, and the spool's
    directory lies under a file: ``flush`` ends within its default timeout (a host's
    shutdown used to hang on it forever) raising ``NotStored``, which counts the events
    and names both causes. They stay in memory: spooled once the directory can be made,
    then stored once."""
    events = varied_events(3)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    if nats_down:
        embedded_nats.kill()
    publisher = publisher_for(embedded_nats.url, topology, blocker / "spool")
    await publisher.start()
    for event in events:
        await publisher.publish(event)
    async with asyncio.timeout(60):  # a guard: the flush never returned
        with pytest.raises(NotStored) as raised:
            await publisher.flush()
    message = str(raised.value)
    assert message.startswith(f"{len(events)} events are stored nowhere"), message
    assert f"the spool {blocker / 'spool'}" in message and "Not a directory" in message
    assert ("is unreachable" if nats_down else "has not acknowledged them") in message

    blocker.unlink()

    async def spooled() -> bool:
        """the events waiting in memory were spooled once the directory could be made"""
        return len(publisher.spool) == len(events)

    await wait_for(spooled, within=30)
    if nats_down:
        embedded_nats.start()
    client = await nats.connect(embedded_nats.url)
    await declare_streams(client.jetstream(), topology)
    await client.close()
    stored = await stored_once_resent(publisher, embedded_nats.url, topology)
    assert stored == sorted(str(e.event_id) for e in events)


async def test_a_close_cancelled_while_it_waits_for_acknowledgements_still_spools_the_events(
    embedded_nats: EmbeddedNats, private_log: Topology, tmp_path: Path
) -> None:
    """NATS hangs with events in flight and the host's shutdown cancels ``close`` while it
    waits for their acknowledgements (a deadline, Ctrl-C): the events are spooled all the
    same, not left in memory to die with the process, and in a worker thread (the commit
    may wait seconds for another process's; the loop runs on). The next publisher on the
    spool has each stored once."""
    events = varied_events(5)
    spool = tmp_path / "spool"
    publisher = publisher_for(embedded_nats.url, private_log, spool)
    committed_in: list[int] = []
    update = publisher.spool.update

    def update_noting_the_thread(**changes: Any) -> None:
        committed_in.append(threading.get_ident())
        update(**changes)

    publisher.spool.update = update_noting_the_thread  # type: ignore[method-assign]
    await publisher.start()
    with hung(embedded_nats):
        for event in events:
            await publisher.publish(event)
        closing = asyncio.create_task(publisher.close())
        await asyncio.sleep(0)  # one turn: close runs until it waits for the acks
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        left = Spool(spool)
        assert len(left) == len(events)
        left.close()
    assert committed_in and threading.get_ident() not in committed_in

    later = publisher_for(embedded_nats.url, private_log, spool)
    await later.start()
    stored = await stored_once_resent(later, embedded_nats.url, private_log)
    assert stored == sorted(str(e.event_id) for e in events)


async def test_an_event_published_after_close_is_in_the_spool_when_publish_returns(
    embedded_nats: EmbeddedNats, private_log: Topology, tmp_path: Path
) -> None:
    """A host records after its tracker was closed (a request finishing after the shutdown
    hook): nothing sends or spools that event later, so ``publish`` returns once it is
    in the spool, not with it in memory, lost when the loop ends; the next publisher on
    the spool stores it once."""
    event = varied_events(1)[0]
    spool = tmp_path / "spool"
    publisher = publisher_for(embedded_nats.url, private_log, spool)
    await publisher.start()
    await publisher.close()
    await publisher.publish(event)
    left = Spool(spool)
    assert [e.event_id for e in left.oldest(10)] == [str(event.event_id)]
    left.close()

    later = publisher_for(embedded_nats.url, private_log, spool)
    await later.start()
    stored = await stored_once_resent(later, embedded_nats.url, private_log)
    assert stored == [str(event.event_id)]


async def test_with_nats_refusing_and_the_spool_failing_events_wait_in_memory_up_to_the_limit(
    embedded_nats: EmbeddedNats, topology: Topology, tmp_path: Path
) -> None:
    """NATS is up but refuses the events (no stream takes them yet) and the spool's
    directory lies under a file: ``max_in_flight`` events wait in memory, and the next
    ``publish`` raises ``SpoolFailing`` (as with NATS down) rather than wait for room as long
    as the fault lasts, a host's every call hanging on it. Those that waited are stored
    once the spool and the stream are there."""
    events = varied_events(4)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    publisher = publisher_for(embedded_nats.url, topology, blocker / "spool", max_in_flight=3)
    await publisher.start()
    for event in events[:3]:
        await publisher.publish(event)
    async with asyncio.timeout(60):  # a guard: publish waited for room for ever
        with pytest.raises(SpoolFailing, match=r"has not taken them .* Not a directory"):
            await publisher.publish(events[3])

    blocker.unlink()
    client = await nats.connect(embedded_nats.url)
    await declare_streams(client.jetstream(), topology)
    await client.close()
    stored = await stored_once_sent(publisher, embedded_nats.url, topology, events[:3])
    assert stored == sorted(str(e.event_id) for e in events[:3])


async def test_a_spool_another_process_filled_is_read_off_the_loop_when_it_is_resent(
    embedded_nats: EmbeddedNats,
    private_log: Topology,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The spool, filled by another process sharing its directory, is re-sent once the
    publisher connects: each read of it (the batches, the count it logs after) is made in
    a worker thread, since a read waits while another thread commits (for seconds, while
    yet another process holds the file), and the loop must run on meanwhile."""
    events = varied_events(20)
    spool = tmp_path / "spool"
    subject = private_log.event_subject(events[0].SUBJECT)
    other = Spool(spool)
    other.update(put=[SpooledEvent(str(e.event_id), subject, encode(e)) for e in events])
    other.close()
    publisher = publisher_for(embedded_nats.url, private_log, spool)
    read_in: list[int] = []
    read = publisher.spool._read

    def read_noting_the_thread(query: str, *params: object) -> list[tuple[Any, ...]]:
        read_in.append(threading.get_ident())
        return read(query, *params)

    publisher.spool._read = read_noting_the_thread  # type: ignore[method-assign]

    async def resent() -> bool:
        """the publisher said it re-sent the spool"""
        return any("re-sent 20 spooled events" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.INFO, logger="budget"):
        await publisher.start()
        await wait_for(resent)
    await publisher.close()
    assert read_in and threading.get_ident() not in read_in
    stored = await stored_event_ids(embedded_nats.url, private_log)
    assert sorted(stored) == sorted(str(e.event_id) for e in events)


async def test_a_tracked_call_cancelled_while_its_usage_waits_for_room_is_still_recorded(
    embedded_nats: EmbeddedNats, topology: Topology, tmp_path: Path
) -> None:
    """The provider has answered a ``track_llm_call`` function, and its usage waits for
    room in the publisher (NATS refusing, the spool failing) when its caller is cancelled
    (an ``asyncio.timeout`` around the call, a client gone): the call happened and was
    paid for, so its usage is recorded once room comes, not dropped with the caller."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    publisher = publisher_for(
        embedded_nats.url, topology, blocker / "spool", max_in_flight=1, ack_timeout=30
    )
    settings = Settings(nats_url=embedded_nats.url, subject_prefix=topology.prefix, fail_open=True)
    tracker = UsageTracker(settings, await get_pricing_registry(), publisher)
    await tracker.start()
    first = await tracker.record_usage(model="gpt-4o", provider="openai", input_tokens=10)
    answered = asyncio.Event()

    @tracker.track_llm_call(model="gpt-4o", user_id="u1")
    async def call() -> dict[str, Any]:
        answered.set()
        return {"usage": {"prompt_tokens": 100, "completion_tokens": 10}}

    calling = asyncio.create_task(call())
    await answered.wait()  # the call's task runs on until it waits for room for its usage
    calling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await calling

    blocker.unlink()
    client = await nats.connect(embedded_nats.url)
    await declare_streams(client.jetstream(), topology)
    await client.close()

    async def both_stored() -> bool:
        """the call's usage reached the log after the first event"""
        return len(await stored_event_ids(embedded_nats.url, topology)) == 2

    await wait_for(both_stored)
    await tracker.close()
    assert str(first.event_id) in await stored_event_ids(embedded_nats.url, topology)
