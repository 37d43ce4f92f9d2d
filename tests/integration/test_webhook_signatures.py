"""The notifier's webhook deliveries checked by a receiver that verifies them (alerting.py's,
with ``budget.webhooks.verify_signature``): each attempt is signed at its own time, so a
retry after an outage still verifies; a copy of a delivery replayed after the tolerance,
or with its body, key or time changed, is refused; a redirect is no delivery."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from nats.aio.client import Client

from budget.config import Settings
from budget.webhooks import SIGNATURE_HEADER
from events import Topology
from services.notifier import NotifierConfig

from alerting import (
    Mailbox,
    Webhook,
    alert_settings,
    notifier,
    outbox,
    queue_alerts,
    with_webhook,
)
from support import rows, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(
    nats_url: str, db: str, topology: Topology, tmp_path: Path, hook: Webhook, box: Mailbox
) -> Settings:
    return alert_settings(nats_url, db, topology, tmp_path, hook, box)


async def delivered(nc: Client, db: str, settings: Settings, hook: Webhook, count: int) -> None:
    ids = await queue_alerts(db, count)
    async with notifier(nc, settings, NotifierConfig()):

        async def received() -> bool:
            """the receiver verified and took every alert"""
            return hook.keys() == ids

        await wait_for(received)


def post(url: str, headers: dict[str, str], body: bytes) -> int:
    """POST a copy of a delivery, as an attacker who captured one would; the answer."""
    request = urllib.request.Request(url, body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def timestamp(header: str) -> int:
    return int(header.split(",")[0].removeprefix("t="))


async def test_a_retry_is_signed_at_its_own_time(
    nc: Client, db: str, settings: Settings, hook: Webhook
) -> None:
    hook.respond = lambda key: 200 if hook.answered else 503  # down for the first attempt
    await delivered(nc, db, settings, hook, 1)
    (first, down), (retry, up) = hook.answered
    assert (down, up) == (503, 200) and hook.refused == []
    assert timestamp(retry) > timestamp(first)  # the retry waited >= 1 s (its backoff)


async def test_a_replayed_or_tampered_copy_is_refused(
    nc: Client, db: str, settings: Settings, hook: Webhook
) -> None:
    await delivered(nc, db, settings, hook, 2)
    headers, body = hook.received[0]
    key, signature = headers["Idempotency-Key"], headers[SIGNATURE_HEADER]
    other_key = hook.received[1][0]["Idempotency-Key"]
    assert post(hook.url, headers, body) == 200  # a repeat within the tolerance: dropped by key
    copies = {
        "body changed": (headers, body.replace(b'"alert 0"', b'"alert 9"')),
        "key changed": ({**headers, "Idempotency-Key": other_key}, body),
        "time changed": (
            {**headers, SIGNATURE_HEADER: signature.replace("t=", "t=1", 1)},
            body,
        ),
        "unsigned": ({k: v for k, v in headers.items() if k != SIGNATURE_HEADER}, body),
    }
    assert {what: post(hook.url, *copy) for what, copy in copies.items()} == dict.fromkeys(
        copies, 400
    )
    hook.clock = lambda: time.time() + 301  # the receiver's tolerance is 300 s
    assert post(hook.url, headers, body) == 400  # replayed later
    assert len(hook.refused) == len(copies) + 1
    assert hook.keys() == [key, other_key, key]


@contextlib.contextmanager
def redirecting_server() -> Iterator[str]:
    """A URL that answers a POST with a redirect to a page that answers a GET with 200
    (urllib's default would follow with a GET, without the body, and take the 200)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_redirect_is_not_a_delivery(nc: Client, db: str, settings: Settings) -> None:
    with redirecting_server() as url:
        redirected = with_webhook(settings, url=url)
        await queue_alerts(db, 1)
        async with notifier(nc, redirected, NotifierConfig(max_backoff=0.5)):

            async def retried() -> bool:
                """the notifier tried twice, each a failure of the channel"""
                found = await rows(db, "SELECT status, attempts, last_error FROM alert_outbox")
                return found[0][1] >= 2 and "webhook answered 302" in (found[0][2] or "")

            await wait_for(retried)
    assert [r[2] for r in await outbox(db)] == ["pending"]
    # What to do about it, without quoting where it points (a path may hold a token).
    [(why,)] = await rows(db, "SELECT last_error FROM alert_outbox")
    assert why == (
        "RuntimeError: webhook answered 302 Found; the notifier follows no redirect:"
        " set webhook.url to the address it redirects to"
    )
