"""Helpers for the producer's fault tests: a publisher on a private server, what the log
holds, and faults of the spool's disk and of the server."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
from nats.js.api import ConsumerConfig

from budget.publisher import EventPublisher, PublisherConfig
from budget.spool import Spool
from events import Topology, UsageRecorded
from services.embedded import EmbeddedNats

from support import wait_for


def publisher_for(url: str, topology: Topology, spool: Path, **options: Any) -> EventPublisher:
    """A publisher quick to give up on an acknowledgement or a connection, re-sending its
    spool twice a second; ``options`` (``PublisherConfig`` fields) over that."""
    quick: dict[str, Any] = {"flush_interval": 0.5, "ack_timeout": 1.0, "connect_timeout": 0.5}
    return EventPublisher(
        PublisherConfig(nats_url=url, topology=topology, spool_dir=spool, **(quick | options))
    )


async def stored_event_ids(url: str, topology: Topology) -> list[str]:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        sub = await js.pull_subscribe(
            topology.events_wildcard,
            stream=topology.event_stream.name,
            config=ConsumerConfig(max_ack_pending=-1),  # none is acknowledged
        )
        info = await js.stream_info(topology.event_stream.name)
        messages = []
        while len(messages) < info.state.messages:
            messages += await sub.fetch(min(1000, info.state.messages - len(messages)), timeout=5)
        return [(m.headers or {})["Nats-Msg-Id"] for m in messages]
    finally:
        await client.close()


async def stored_once_resent(publisher: EventPublisher, url: str, topology: Topology) -> list[str]:
    """Wait until ``publisher`` has re-sent its spool, close it, and return the ids of the
    events the log holds, sorted."""

    async def spool_empty() -> bool:
        """the publisher re-sent its spool"""
        return len(publisher.spool) == 0

    await wait_for(spool_empty, within=30)
    await publisher.close()
    return sorted(await stored_event_ids(url, topology))


async def stored_once_sent(
    publisher: EventPublisher, url: str, topology: Topology, events: list[UsageRecorded]
) -> list[str]:
    """Wait until the log holds as many events as ``events`` (sent from memory, not the
    spool), close ``publisher``, and return the ids of the events the log holds, sorted."""

    async def all_sent() -> bool:
        """the events waiting in memory were sent"""
        return len(await stored_event_ids(url, topology)) == len(events)

    await wait_for(all_sent)
    await publisher.close()
    return sorted(await stored_event_ids(url, topology))


def bulky(events: list[UsageRecorded]) -> list[UsageRecorded]:
    """The events with a 10 kB tag: each needs pages of its own in the spool's file, so
    none fits while ``disk_full``."""
    return [
        UsageRecorded.model_validate(e.model_dump() | {"tags": {"note": "x" * 10_000}})
        for e in events
    ]


@contextlib.contextmanager
def hung(server: EmbeddedNats) -> Iterator[None]:
    """The server stopped (SIGSTOP) while inside: connections stay up, nothing answers."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if server.running:
            os.kill(server.pid, signal.SIGCONT)


@contextlib.contextmanager
def spool_locked(spool: Path) -> Iterator[None]:
    """Another process holds the write lock of the spool in directory ``spool`` (made if
    need be) while inside, as a process sharing the directory does while it commits."""
    made = Spool(spool)
    made.update()
    made.close()
    db = sqlite3.connect(spool / "spool.sqlite3", isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
        db.execute("ROLLBACK")
    finally:
        db.close()


def spool_commits(spool: Path) -> int:
    """How many commits put the events now in the spool in directory ``spool``."""
    with contextlib.closing(sqlite3.connect(spool / "spool.sqlite3")) as db:
        return int(db.execute("SELECT count(DISTINCT spooled_at) FROM spool").fetchone()[0])
