"""An alert e-mail has one deadline, the channel's ``timeout``, for the whole session:
a mail server that trickles its answers a byte at a time (each byte well within any
per-read timeout) holds the email channel no longer than that, and the next alert goes
out while it is still trickling; the first goes out when tried again."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from test_email_tls import email_settings

from events import Topology
from services.notifier import NotifierConfig

from alerting import Mailbox, notifier, outbox, queue_alerts, smtp_server
from support import wait_for

pytestmark = pytest.mark.integration

GREETING = b"220 " + b"." * 600 + b"\r\n"
BYTE_EVERY = 0.1
"""Seconds between the trickled greeting's bytes: a minute for all of it."""


class TricklingFront:
    """A mail server's address whose first connection gets its greeting a byte at a time
    (on to the end, whether the client still listens or not); every later one is relayed
    to ``box``."""

    def __init__(self, box: Mailbox) -> None:
        self.box = box
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.closed = threading.Event()
        self.trickled_to_the_end = threading.Event()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        first = True
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self._open.append(conn)
            serve = self._trickle if first else self._relay
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
            first = False

    def _trickle(self, conn: socket.socket) -> None:
        for byte in GREETING:
            if self.closed.wait(BYTE_EVERY):
                return
            with contextlib.suppress(OSError):
                conn.send(bytes([byte]))
        self.trickled_to_the_end.set()

    def _relay(self, conn: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.box.port))
        self._open.append(upstream)
        threading.Thread(target=_pipe, args=(upstream, conn), daemon=True).start()
        _pipe(conn, upstream)

    def close(self) -> None:
        self.closed.set()
        self.server.close()
        for conn in self._open:
            conn.close()


def _pipe(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)


@pytest.fixture
def front() -> Iterator[TricklingFront]:
    with smtp_server() as box:
        gate = TricklingFront(box)
        try:
            yield gate
        finally:
            gate.close()


async def test_a_mail_server_trickling_its_answers_holds_the_next_alert_only_for_the_timeout(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path, front: TricklingFront
) -> None:
    settings = email_settings(
        nats_url, db, topology, tmp_path, front.box, tls="none", smtp_port=front.port, timeout=1
    )
    slow, fast = await queue_alerts(db, 2, channel="email")
    # From the slow one's first failure, the next alert is tried after it (suspect_after),
    # so only the deadline stands in its way.
    async with notifier(nc, settings, NotifierConfig(max_backoff=0.5, suspect_after=1)):

        async def fast_one_sent() -> bool:
            """the second alert taken by the mail server and recorded sent"""
            status = {str(r[0]): r[2] for r in await outbox(db)}
            return status[fast] == "sent"

        await wait_for(fast_one_sent, within=30)
        assert not front.trickled_to_the_end.is_set()

        async def both_sent() -> bool:
            """the slow one, retried on a connection that answers, sent too"""
            return [r[2] for r in await outbox(db)] == ["sent", "sent"]

        await wait_for(both_sent, within=30)
    ids = [message["Message-ID"] for message in front.box.messages]
    assert ids == [f"<{fast}@budget-manager>", f"<{slow}@budget-manager>"]
