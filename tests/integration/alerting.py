"""Real receivers for alert tests: an HTTP webhook and an SMTP server (aiosmtpd), both
started by the test, and the evaluator + notifier running on the test's servers."""

from __future__ import annotations

import asyncio
import contextlib
import email
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from nats.aio.client import Client

from budget.config import Settings
from events import Topology
from services.notifier import Notifier, NotifierConfig
from services.ops import prepare
from services.worker import run_projection

from support import rows

WEBHOOK_SECRET = "test-secret"


@dataclass
class Webhook:
    """Records every POST it answers with a 2xx; answers ``status`` (settable while it
    runs), or what ``respond`` returns for the alert's ``Idempotency-Key`` (it may block)."""

    status: int = 200
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""
    respond: Callable[[str], int] | None = None

    def keys(self) -> list[str]:
        """The ``Idempotency-Key`` (alert id) of every alert received, in order."""
        return [headers["Idempotency-Key"] for headers, _ in self.received]

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@contextlib.contextmanager
def webhook_server() -> Iterator[Webhook]:
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            respond = hook.respond
            status = hook.status if respond is None else respond(self.headers["Idempotency-Key"])
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


@dataclass
class Mailbox:
    messages: list[email.message.Message] = field(default_factory=list)
    port: int = 0

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


@contextlib.contextmanager
def smtp_server() -> Iterator[Mailbox]:
    with socket.socket() as probe:  # aiosmtpd checks its own port, so it cannot be 0
        probe.bind(("127.0.0.1", 0))
        box = Mailbox(port=probe.getsockname()[1])
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
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
                },
            },
        }
    )


@contextlib.asynccontextmanager
async def evaluator(
    nc: Client, settings: Settings, *, notifier: NotifierConfig | None = None
) -> AsyncIterator[None]:
    """The alerts worker and a notifier, until the block ends."""
    await prepare(settings.nats_url, settings.database_url, settings)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_projection("alerts", nc, settings, stop)),
        asyncio.create_task(
            Notifier(settings, nc, notifier or NotifierConfig(max_backoff=1.0)).run(stop)
        ),
    ]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def outbox(database_url: str) -> list[tuple[Any, ...]]:
    """(alert_id, channel, status, attempts) of every queued delivery."""
    return await rows(
        database_url,
        "SELECT alert_id, channel, status, attempts FROM alert_outbox ORDER BY seq, channel",
    )
