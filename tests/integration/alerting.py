"""Real receivers for alert tests: an HTTP webhook that verifies each delivery's signature,
a webhook receiver on a bare socket for answers no HTTP server would give, and an SMTP
server (aiosmtpd, in clear or over TLS), all started by the test, and the evaluator +
notifier running on the test's servers."""

from __future__ import annotations

import asyncio
import contextlib
import email
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import uuid4

from aiosmtpd.controller import Controller
from nats.aio.client import Client

from budget.config import Settings
from budget.webhooks import SIGNATURE_HEADER, verify_signature
from events import Alert, AlertSeverity, AlertType, Topology, utc_now
from projections.db import connect
from projections.engine.checkpoints import live_position
from services.liveness import Liveness
from services.notifier import Notifier, NotifierConfig
from services.ops import prepare
from services.worker import run_projection

from support import rows, wait_for

WEBHOOK_SECRET = "test-secret"


@dataclass
class Webhook:
    """Verifies each POST's signature (with ``WEBHOOK_SECRET``, at ``clock``'s time) and
    answers 400 to one that does not verify, keeping it in ``refused``; else answers
    ``status`` (settable while it runs), or what ``respond`` returns for the alert's
    ``Idempotency-Key`` (it may block). Records every POST it answers with a 2xx, and the
    signature header and answer of every POST in ``answered``."""

    status: int = 200
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    refused: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answered: list[tuple[str, int]] = field(default_factory=list)
    url: str = ""
    respond: Callable[[str], int] | None = None
    clock: Callable[[], float] = time.time

    def keys(self) -> list[str]:
        """The ``Idempotency-Key`` (alert id) of every alert received, in order."""
        return [headers["Idempotency-Key"] for headers, _ in self.received]

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@contextlib.contextmanager
def webhook_server(secret: str = WEBHOOK_SECRET) -> Iterator[Webhook]:
    """A receiver that verifies every delivery's signature with ``secret``."""
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            key = self.headers.get("Idempotency-Key", "")
            signature = self.headers.get(SIGNATURE_HEADER, "")
            respond = hook.respond
            if not verify_signature(secret, signature, key, body, now=hook.clock()):
                hook.refused.append((dict(self.headers), body))
                status = 400
            else:
                status = hook.status if respond is None else respond(key)
            hook.answered.append((signature, status))
            if status < 300:
                hook.received.append((dict(self.headers), body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


class RawReceiver:
    """A webhook receiver on a bare socket: reads each POST, then hands its connection and
    ``Idempotency-Key`` to ``answer``, which writes what it likes (in a thread per
    connection, so one answer held back holds no other). Keeps every connection open
    until ``close``; ``closed`` is set then, for answers that wait."""

    def __init__(self, answer: Callable[[socket.socket, str], None]) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/alerts"
        self.answer = answer
        self.keys: list[str] = []
        """The key of every POST read, in the order they were read."""
        self.closed = threading.Event()
        self._connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self._connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the notifier hung up, or the test ended
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            fields = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
            }
            while len(body) < int(fields[b"content-length"]):
                body += conn.recv(65536)
            key = fields[b"idempotency-key"].decode()
            self.keys.append(key)
            self.answer(conn, key)

    def close(self) -> None:
        self.closed.set()
        self.server.close()
        for conn in self._connections:
            conn.close()


@contextlib.contextmanager
def raw_receiver(answer: Callable[[socket.socket, str], None]) -> Iterator[RawReceiver]:
    receiver = RawReceiver(answer)
    try:
        yield receiver
    finally:
        receiver.close()


def with_webhook(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with its webhook channel's ``changes`` (e.g. another url, timeout)."""
    channels = settings.alert_channels
    webhook = channels.webhook.model_copy(update=changes)
    return settings.model_copy(
        update={"alert_channels": channels.model_copy(update={"webhook": webhook})}
    )


@dataclass
class Mailbox:
    """Keeps every message it accepts; refuses (554) the ones ``refuse`` picks; answers
    QUIT with ``quit_answer``."""

    messages: list[email.message.Message] = field(default_factory=list)
    port: int = 0
    refuse: Callable[[email.message.Message], bool] = lambda message: False
    quit_answer: str = "221 Bye"

    async def handle_QUIT(self, server: object, session: object, envelope: object) -> str:
        return self.quit_answer

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content)
        if self.refuse(message):
            return "554 Transaction failed: refused"
        self.messages.append(message)
        return "250 OK"


@contextlib.contextmanager
def smtp_server(**options: Any) -> Iterator[Mailbox]:
    """``options`` for aiosmtpd, e.g. ``ssl_context`` (SMTPS), ``tls_context`` (STARTTLS)."""
    with socket.socket() as probe:  # aiosmtpd checks its own port, so it cannot be 0
        probe.bind(("127.0.0.1", 0))
        box = Mailbox(port=probe.getsockname()[1])
    controller = Controller(box, hostname="127.0.0.1", port=box.port, **options)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def alert_settings(
    nats_url: str,
    database_url: str,
    topology: Topology,
    tmp_path: Path,
    hook: Webhook,
    box: Mailbox,
) -> Settings:
    return Settings.model_validate(
        {
            "nats_url": nats_url,
            "database_url": database_url,
            "subject_prefix": topology.prefix,
            "spool_dir": tmp_path / "spool",
            "default_limit": None,
            "alert_channels": {
                "webhook": {"enabled": True, "url": hook.url, "secret": WEBHOOK_SECRET},
                "email": {
                    "enabled": True,
                    "recipients": ["ops@example.com"],
                    "smtp_host": "127.0.0.1",
                    "smtp_port": box.port,
                    "tls": "none",
                },
            },
        }
    )


@contextlib.asynccontextmanager
async def evaluator(
    nc: Client,
    settings: Settings,
    *,
    notifier: NotifierConfig | None = None,
    notifier_url: str | None = None,
) -> AsyncIterator[None]:
    """The alerts worker and a notifier, until the block ends. ``notifier_url``: the
    database URL the notifier connects with, its own role's as under ``budget up`` (else
    the owner's, ``settings.database_url``)."""
    await prepare(settings.nats_url, settings.database_url, settings)
    own = settings
    if notifier_url is not None:
        own = settings.model_copy(update={"database_url": notifier_url})
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_projection("alerts", nc, settings, stop)),
        asyncio.create_task(
            Notifier(own, nc, notifier or NotifierConfig(max_backoff=1.0)).run(stop)
        ),
    ]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


@contextlib.asynccontextmanager
async def notifier(
    nc: Client, settings: Settings, config: NotifierConfig, liveness: Liveness | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    """A notifier running until the block ends (or its task is cancelled: killed)."""
    stop = asyncio.Event()
    task = asyncio.create_task(Notifier(settings, nc, config, liveness=liveness).run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)


async def queue_alerts(db: str, count: int, channel: str = "webhook") -> list[str]:
    """``count`` alerts queued for ``channel``, in this order; their ids."""
    alerts = [
        Alert(
            alert_id=uuid4(),
            alert_type=AlertType.THRESHOLD_WARNING,
            severity=AlertSeverity.WARNING,
            rule_id="default-soft-limit",
            rule_name="Soft limit",
            message=f"alert {n}",
            raised_at=utc_now(),
        )
        for n in range(count)
    ]
    conn = await connect(db)
    try:
        for alert in alerts:
            await conn.execute(
                "INSERT INTO alert_outbox (alert_id, channel, subject, payload)"
                " VALUES (%s, %s, 'warning.threshold_warning', %s)",
                (alert.alert_id, channel, alert.model_dump_json()),
            )
    finally:
        await conn.close()
    return [str(a.alert_id) for a in alerts]


async def outbox(database_url: str) -> list[tuple[Any, ...]]:
    """(alert_id, channel, status, attempts) of every queued delivery."""
    return await rows(
        database_url,
        "SELECT alert_id, channel, status, attempts FROM alert_outbox ORDER BY seq, channel",
    )


async def evaluated_to_the_end(nc: Client, db: str, topology: Topology) -> None:
    """Wait until the live alerts version has applied the whole log as it stands: what
    it was going to raise or queue is in the database then."""
    info = await nc.jetstream().stream_info(topology.event_stream.name)
    last = info.state.last_seq

    async def applied() -> bool:
        """the alert evaluator applied the log to its end"""
        async with await connect(db) as conn:
            return await live_position(conn, "alerts") >= last

    await wait_for(applied, within=30)
