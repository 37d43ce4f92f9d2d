"""A webhook delivery is done once the receiver answers 2xx: a body it then never finishes
sending (a Content-Length it does not keep, a stream it holds open) does not make the
notifier count the alert failed and send it again."""

from __future__ import annotations

import socket
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
from support import wait_for

pytestmark = pytest.mark.integration


def announce_a_body_never_sent(conn: socket.socket, key: str) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nok")  # 98 bytes never come


async def test_an_answer_of_2xx_is_a_delivery_whatever_its_body_does(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    with webhook_server() as hook, smtp_server() as box:
        settings = alert_settings(nats_url, db, topology, tmp_path, hook, box)
    await queue_alerts(db, 2)
    with raw_receiver(announce_a_body_never_sent) as receiver:
        settings = with_webhook(settings, url=receiver.url, timeout=0.5)
        async with notifier(nc, settings, NotifierConfig(max_backoff=0.2)):

            async def sent() -> bool:
                """both alerts recorded sent on the webhook"""
                return [r[2] for r in await outbox(db)] == ["sent", "sent"]

            await wait_for(sent, within=30)
        assert len(receiver.keys) == 2
