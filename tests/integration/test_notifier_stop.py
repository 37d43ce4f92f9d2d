"""The notifier stops when it is told to, whatever a channel's send did with its
cancellation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.client import Client

from events import Alert, Topology
from projections.engine.projection import Connection
from services.channels import Sender
from services.notifier import Notifier, NotifierConfig

from alerting import alert_settings, queue_alerts, smtp_server, webhook_server

pytestmark = pytest.mark.integration


class SwallowsItsCancellation(Sender):
    """A send that, cancelled, returns as if its wait had ended: what Python 3.11's
    ``asyncio.wait_for`` does when the awaited answer arrives as the cancellation does
    (aiosmtplib waits for a mail server's answers so)."""

    def __init__(self) -> None:
        self.sending = asyncio.Event()

    async def send(self, alert: Alert, payload: bytes, conn: Connection) -> None:
        self.sending.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return


async def test_a_notifier_told_to_stop_stops_though_a_send_swallowed_its_cancellation(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    with webhook_server() as hook, smtp_server() as box:
        settings = alert_settings(nats_url, db, topology, tmp_path, hook, box)
    await queue_alerts(db, 1, channel="email")
    notifier = Notifier(settings, nc, NotifierConfig(max_backoff=1.0))
    swallowing = SwallowsItsCancellation()
    notifier.senders["email"] = swallowing
    stop = asyncio.Event()
    running = asyncio.create_task(notifier.run(stop))
    try:
        async with asyncio.timeout(30):
            await swallowing.sending.wait()
        stop.set()
        async with asyncio.timeout(30):  # it ran on for ever: CI hung in its teardown
            await running
    finally:
        running.cancel()
