"""Where alerts go: one sender per channel. Each raises on failure, and the notifier
retries: an ordinary failure is the channel's (its receiver is down) and holds back the
alerts after it; ``Rejected`` is this alert's (its receiver answered that it refuses this
one: a webhook's 400, a mail server refusing this message's sender, recipients or content),
so it is retried on its own while the next ones go ahead; ``Undeliverable``: this
alert can never go out on this channel (it cannot be rendered for it), so it is not retried.

Every channel carries the alert's id so receivers can drop a repeat (a send whose success
was not recorded, e.g. the notifier died right after it, is sent again): the
``Nats-Msg-Id`` header, the webhook's ``Idempotency-Key``, the email's ``Message-ID``, the
UI feed's primary key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator

import httpx
import psycopg
from nats.aio.client import Client
from nats.errors import MaxPayloadError

from budget.config import AlertChannels, EmailChannel, WebhookChannel
from budget.natsconn import (
    PermissionDenied,
    on_refusal,
    refusal_message,
    report_refusals,
    round_trip,
)
from budget.one_line import one_line
from budget.webhooks import SIGNATURE_HEADER, sign
from events import Alert, Topology
from events.permissions import subject_matches
from projections.engine.projection import Connection
from services.mail import MessageRefused, alert_message, send_mail

__all__ = ["Rejected", "Sender", "Undeliverable", "senders", "undeliverable"]

log = logging.getLogger("budget.alerts")
_REFUSED_CONTENT = {400, 413, 415, 422}
"""Webhook answers that refuse this payload rather than the sender. A receiver also answers
so while misconfigured or with a rotated secret, so the alert is retried, on its own."""


class Undeliverable(Exception):
    """This alert can never be sent on this channel; the next ones can."""


class Rejected(Exception):
    """The receiver refused this alert (not the channel): retry it, but let the next go."""


@contextlib.contextmanager
def undeliverable(*kinds: type[Exception]) -> Iterator[None]:
    """Raise ``kinds`` as ``Undeliverable``: failures of this alert, not of the channel."""
    try:
        yield
    except kinds as exc:
        raise Undeliverable(f"{type(exc).__name__}: {exc}") from exc


class Sender(ABC):
    batched = False
    """True when ``send`` only hands the alert over and ``flush`` confirms it."""

    @abstractmethod
    async def send(self, alert: Alert, payload: bytes, conn: Connection) -> None:
        """Deliver or raise. ``payload`` is the alert's JSON; ``conn`` the notifier's."""

    async def flush(self) -> None:  # noqa: B027 - optional: most channels confirm in send
        """Confirm what ``send`` handed over, or raise (then it is all sent again)."""


class NatsSender(Sender):
    batched = True

    def __init__(self, nc: Client, topology: Topology) -> None:
        self.nc, self.topology = nc, topology
        self._refused: list[str] = []
        """Subjects the server refused a publish on since the last flush."""
        report_refusals(nc)
        on_refusal(nc, self._refused.append)

    async def send(self, alert: Alert, payload: bytes, conn: Connection) -> None:
        self._connected()
        subject = self.topology.alert_subject(alert.severity.value, alert.alert_type.value)
        with undeliverable(MaxPayloadError):
            await self.nc.publish(subject, payload, headers={"Nats-Msg-Id": str(alert.alert_id)})

    async def flush(self) -> None:
        # While the client reconnects, publish only buffers and flush returns without a
        # round trip: what it confirmed is then in this process's memory, not the server's.
        self._connected()
        # The server refuses a publish its credential may not make only with an error
        # after it (the publish itself succeeds): read by the time it answers what follows.
        await round_trip(self.nc)
        self._connected()
        alerts = self.topology.alerts_wildcard
        refused = [s for s in self._refused if subject_matches(alerts.lower(), s)]
        self._refused.clear()
        if refused:
            user = self.nc.options.get("user")
            raise PermissionDenied(refusal_message(refused[0], topology=self.topology, user=user))

    def _connected(self) -> None:
        if not self.nc.is_connected:
            raise ConnectionError("not connected to NATS (reconnecting)")


class LogSender(Sender):
    def __init__(self, level: str) -> None:
        self.level = logging.getLevelNamesMapping()[level.upper()]

    async def send(self, alert: Alert, payload: bytes, conn: Connection) -> None:
        log.log(
            self.level,
            "%s %s [%s]: %s",
            alert.severity.value.upper(),
            alert.alert_type.value,
            alert.alert_id,
            one_line(alert.message),  # a host app's ids in it forge no log line
        )


class UiSender(Sender):
    """The dashboard's feed: a table it reads, newest first."""

    async def send(self, alert: Alert, payload: bytes, conn: Connection) -> None:
        with undeliverable(psycopg.DataError):
            await conn.execute(
                "INSERT INTO alert_feed (alert_id, payload) VALUES (%s, %s)"
                " ON CONFLICT (alert_id) DO NOTHING",
                (alert.alert_id, payload.decode()),
            )


class WebhookSender(Sender):
    def __init__(self, config: WebhookChannel) -> None:
        self.config = config
        # The system's trust store (docs/alerts.md), not httpx's own bundle (certifi's).
        self.tls = ssl.create_default_context()

    async def send(self, alert: Alert, payload: bytes, conn: Connection) -> None:
        key = str(alert.alert_id)
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": key,
            "User-Agent": "budget-manager",
        }
        if self.config.secret:
            secret = self.config.secret.get_secret_value()
            headers[SIGNATURE_HEADER] = sign(secret, key, payload, timestamp=int(time.time()))
        timeout = self.config.timeout
        try:
            # One deadline for the whole delivery: a timeout per read would let a receiver
            # that trickles its answer a byte at a time hold the channel for ever.
            async with asyncio.timeout(timeout):
                status = await self._post(payload, headers)
        except TimeoutError:
            raise TimeoutError(f"webhook did not answer within {timeout:g} s") from None
        except httpx.HTTPError as exc:
            first = _first_failure(exc)
            raise ConnectionError(f"webhook unreachable: {type(first).__name__}: {first}") from None
        if 200 <= status < 300:
            return
        why = f"webhook answered {status} {httpx.codes.get_reason_phrase(status)}".rstrip()
        if status in _REFUSED_CONTENT:
            raise Rejected(why)
        if 300 <= status < 400:
            # Not followed: the signed body is for the receiver configured, and a 301/302
            # would turn the POST into a GET. Its target is not quoted (a path may hold a
            # token).
            why += (
                "; the notifier follows no redirect: set webhook.url to the address it redirects to"
            )
        raise RuntimeError(why)

    async def _post(self, payload: bytes, headers: dict[str, str]) -> int:
        """The receiver's status. Its body is not read: a 2xx is a delivery whatever the
        body then does, and leaving it unread closes the connection."""
        async with (
            httpx.AsyncClient(verify=self.tls, timeout=self.config.timeout) as client,
            client.stream("POST", self.config.url, content=payload, headers=headers) as answer,
        ):
            return answer.status_code


def _first_failure(exc: BaseException) -> BaseException:
    """The failure ``exc`` reports: httpx's "All connection attempts failed" carries the
    "[Errno 111] Connect call failed" an operator can act on."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return exc


class EmailSender(Sender):
    def __init__(self, config: EmailChannel) -> None:
        self.config = config

    async def send(self, alert: Alert, payload: bytes, conn: Connection) -> None:
        with undeliverable(ValueError):  # e.g. text no encoding can carry
            message = alert_message(self.config, alert, payload)
        try:
            await send_mail(self.config, message)
        except MessageRefused as exc:
            raise Rejected(str(exc)) from exc


def senders(channels: AlertChannels, nc: Client, topology: Topology) -> dict[str, Sender]:
    """The enabled channels' senders, by channel name."""
    every: dict[str, Sender] = {
        "nats": NatsSender(nc, topology),
        "log": LogSender(channels.log.level),
        "ui": UiSender(),
        "webhook": WebhookSender(channels.webhook),
        "email": EmailSender(channels.email),
    }
    return {name: sender for name, sender in every.items() if channels.enabled(name)}
