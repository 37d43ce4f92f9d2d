"""The pull reader on real NATS: it takes its inbox's messages raw from the client's
dispatch, so what nats-py would have parsed for it (sequence, storage time, subject,
statuses) is proven here."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from events import Topology, encode
from projections.engine.log import bind_consumer
from projections.engine.reader import ConsumerGone, PullReader
from projections.history import HistoryProjection

from support import publish, varied_events

Seen = tuple[int, str, int, bytes]


async def reader_after(
    nc: Client, topology: Topology, durable: str, after_seq: int = 0
) -> PullReader[Seen]:
    await bind_consumer(
        nc.jetstream(),
        topology.event_stream.name,
        durable,
        filter_subjects=HistoryProjection().filter_subjects(topology),
        after_seq=after_seq,
        max_ack_pending=1000,
    )
    reader = PullReader(
        nc,
        topology.event_stream.name,
        durable,
        prepare=lambda seq, subject, stored_ns, data: (seq, subject, stored_ns, data),
        request_batch=3,  # several requests, each ended by the server
    )
    await reader.start()
    return reader


async def test_deliveries_carry_sequence_subject_storage_time_and_payload(
    nc: Client, topology: Topology
) -> None:
    events = varied_events(7)
    published_ns = time.time_ns()
    await publish(nc, topology, events)
    reader = await reader_after(nc, topology, "reader-fields")
    try:
        taken = []
        while len(taken) < len(events):
            taken += await reader.take(100, 0, wait=5.0)
        await reader.ack_through(taken[-1])
    finally:
        await reader.stop()
    assert [d.data for d in taken] == [encode(e) for e in events]
    assert [d.stream_seq for d in taken] == list(range(1, len(events) + 1))
    subject = topology.event_subject(events[0].SUBJECT)
    for delivery in taken:
        seq, seen_subject, stored_ns, data = delivery.prepared
        assert (seq, seen_subject, data) == (delivery.stream_seq, subject, delivery.data)
        assert delivery.subject == subject
        assert delivery.reply.startswith("$JS.ACK.")
        # nanoseconds since the epoch, on the server's clock (same machine: within a minute)
        assert abs(stored_ns - published_ns) < 60 * 10**9


async def test_a_deleted_consumer_is_reported_as_gone(nc: Client, topology: Topology) -> None:
    reader = await reader_after(nc, topology, "reader-gone")
    try:
        await nc.jetstream().delete_consumer(topology.event_stream.name, "reader-gone")
        with pytest.raises(ConsumerGone):
            while True:  # the server's status message ends the wait
                await reader.take(10, 0, wait=5.0)
    finally:
        await reader.stop()


async def test_other_subscriptions_keep_nats_py_messages(nc: Client, topology: Topology) -> None:
    reader = await reader_after(nc, topology, "reader-beside")
    received: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def keep(msg: Msg) -> None:
        received.set_result(msg)

    try:
        sub = await nc.subscribe("reader-test.plain", cb=keep)
        await nc.publish("reader-test.plain", b"hello", headers={"Kind": "plain"})
        msg = await asyncio.wait_for(received, 10)
        await sub.unsubscribe()
    finally:
        await reader.stop()
    assert msg.data == b"hello"
    assert msg.headers == {"Kind": "plain"}
