"""A webhook delivery is done once the receiver answers 2xx: a body it then never finishes
sending (a Content-Length it does not keep, a stream it holds open) does not make the
notifier count the alert failed and send it again."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from events import Topology
from services.notifier import NotifierConfig

from alerting import alert_settings, notifier, outbox, queue_alerts, smtp_server, webhook_server
from support import wait_for

pytestmark = pytest.mark.integration


class Receiver:
    """Answers each POST ``200`` with a body it announces and never sends, holding the
    connection open until closed."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/alerts"
        self.posts = 0
        self.done = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                body += conn.recv(65536)
            self.posts += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nok")
            self.held.append(conn)  # the other 98 bytes never come

    def close(self) -> None:
        self.done.set()
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    try:
        yield receiver
    finally:
        receiver.close()


async def test_an_answer_of_2xx_is_a_delivery_whatever_its_body_does(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path, receiver: Receiver
) -> None:
    with webhook_server() as hook, smtp_server() as box:
        settings = alert_settings(nats_url, db, topology, tmp_path, hook, box)
    channels = settings.alert_channels
    webhook = channels.webhook.model_copy(update={"url": receiver.url, "timeout": 0.5})
    settings = settings.model_copy(
        update={"alert_channels": channels.model_copy(update={"webhook": webhook})}
    )
    await queue_alerts(db, 2)
    async with notifier(nc, settings, NotifierConfig(max_backoff=0.2)):

        async def sent() -> bool:
            """both alerts recorded sent on the webhook"""
            return [r[2] for r in await outbox(db)] == ["sent", "sent"]

        await wait_for(sent, within=30)
    assert receiver.posts == 2
