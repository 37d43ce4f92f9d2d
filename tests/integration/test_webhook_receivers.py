"""Webhook receivers that do not answer: one that takes the POST and then trickles its
answer a byte at a time (each byte well within the timeout, so no single read times out)
holds the webhook channel no longer than the channel's ``timeout``, one deadline for all
of the delivery, and the next alert goes out while it is still trickling; one that is not
there at all is named for what the connection met."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import pytest
from nats.aio.client import Client

from events import Topology
from services.notifier import NotifierConfig

from alerting import (
    alert_settings,
    notifier,
    outbox,
    queue_alerts,
    raw_receiver,
    smtp_server,
    webhook_server,
    with_webhook,
)
from support import rows, wait_for

pytestmark = pytest.mark.integration

TRICKLED = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"." * 560 + b"\r\nContent-Length: 0\r\n\r\n"
BYTE_EVERY = 0.1
"""Seconds between the trickled answer's bytes: a minute for all of it."""


async def test_a_receiver_trickling_its_answer_holds_the_next_alert_only_for_the_timeout(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    with webhook_server() as hook, smtp_server() as box:
        settings = alert_settings(nats_url, db, topology, tmp_path, hook, box)
    slow, fast = await queue_alerts(db, 2)
    answered: list[str] = []
    trickled_to_the_end = threading.Event()

    def answer(conn: socket.socket, key: str) -> None:
        if key != slow:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            answered.append(key)
            return
        for byte in TRICKLED:  # on to the end, whether the notifier still listens or not
            if receiver.closed.wait(BYTE_EVERY):
                return
            with contextlib.suppress(OSError):
                conn.send(bytes([byte]))
        trickled_to_the_end.set()

    with raw_receiver(answer) as receiver:
        settings = with_webhook(settings, url=receiver.url, timeout=1.0)
        # Each failure of the slow one counts against the channel; from the first, the next
        # alert is tried after it (suspect_after), so only the deadline stands in its way.
        config = NotifierConfig(max_backoff=0.5, suspect_after=1)
        async with notifier(nc, settings, config):

            async def fast_one_sent() -> bool:
                """the second alert answered by the receiver and recorded sent"""
                status = {str(r[0]): r[2] for r in await outbox(db)}
                return fast in answered and status[fast] == "sent"

            await wait_for(fast_one_sent, within=30)
            assert not trickled_to_the_end.is_set()
            assert receiver.keys[0] == slow
            status = {str(r[0]): r[2:] for r in await outbox(db)}
            assert status[slow][0] == "pending"  # not delivered: retried, not dropped


async def test_a_receiver_not_listening_is_recorded_as_the_refused_connection(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    """``budget alerts show`` says what the connection met (httpx's own words, "All
    connection attempts failed", say nothing an operator can act on)."""
    with webhook_server() as hook, smtp_server() as box:
        settings = alert_settings(nats_url, db, topology, tmp_path, hook, box)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        settings = with_webhook(settings, url=f"http://127.0.0.1:{probe.getsockname()[1]}/")
        await queue_alerts(db, 1)
        async with notifier(nc, settings, NotifierConfig(max_backoff=0.5)):

            async def tried() -> bool:
                """the notifier tried and recorded why it failed"""
                found = await rows(db, "SELECT attempts, last_error FROM alert_outbox")
                return found[0][0] >= 1 and bool(found[0][1])

            await wait_for(tried, within=30)
    [(why,)] = await rows(db, "SELECT last_error FROM alert_outbox")
    assert "webhook unreachable" in why and "[Errno 111]" in why, why
