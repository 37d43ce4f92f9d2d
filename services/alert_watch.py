"""``budget alerts watch``: the alerts the notifier publishes on NATS
(``<prefix>.alerts.<severity>.<type>``), each shown as it arrives: one line on stdout, and
with ``--desktop`` a desktop notification too (``services.desktop_alerts``).

Alerts are not stored on NATS (events/subjects.py): a watcher sees those published while
it is subscribed, and none from while it was away or NATS was; ``budget alerts list``
has them all. One the notifier sends again (the same id) is shown once. Its own state
(subscribed, NATS lost, back) goes to stderr, so stdout holds alerts only. A message that
is not an alert is reported and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from budget.config import Settings, shown_url
from budget.natsconn import PermissionDenied, refusal_message, round_trip, watching_refusal
from budget.one_line import one_line
from events import Alert
from events.subjects import Topology
from services.cli_context import validation_message
from services.ops import nats_client

__all__ = ["Show", "alert_line", "run_watch", "utc_time", "watch_alerts"]

Show = Callable[[Alert], Awaitable[None]]
"""One place an alert is shown (the terminal, the desktop); it reports its own failures."""

Report = Callable[[str], None]


def utc_time(at: datetime) -> str:
    """``at`` to the second, in UTC and saying so: the database hands times back in its
    session's zone, and a reader should not have to guess which zone a line means."""
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def alert_line(alert: Alert, state: str | None = None) -> str:
    """Time (UTC), severity, type, the stored alert's ``state`` when given (``budget alerts
    list``) and message, aligned the same in ``list`` and ``watch``."""
    shown_state = f" {state:<8}" if state is not None else ""
    return (
        f"{utc_time(alert.raised_at)}  {alert.severity.value:<8}"
        f" {alert.alert_type.value:<18}{shown_state} {one_line(alert.message)}"
    )


async def watch_alerts(
    nc: Client,
    topology: Topology,
    shows: Sequence[Show],
    *,
    stop: asyncio.Event,
    report: Report,
) -> None:
    """Show each alert arriving on ``nc`` with every one of ``shows``, until ``stop``.
    Raises ``PermissionDenied`` when the server refuses the subscription (at once, or
    later: a reconnect re-subscribes)."""
    subject = topology.alerts_wildcard
    with watching_refusal(nc, subject) as refused:
        subscription = await nc.subscribe(subject)
        try:
            await round_trip(nc)  # the server has answered the subscription
            if not refused.done():
                report(f"watching {subject}; Ctrl-C to stop")
            shown = asyncio.ensure_future(_show_each(subscription, shows, report))
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait((shown, stopped, refused), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (shown, stopped):
                    task.cancel()
                failed, _ = await asyncio.gather(shown, stopped, return_exceptions=True)
        finally:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await subscription.unsubscribe()
        if refused.done():
            user = nc.options.get("user")
            raise PermissionDenied(
                refusal_message(subject, topology=topology, user=user, publish=False)
            )
        if isinstance(failed, Exception):  # stdout closed, say: the watch has no use
            raise failed


_REMEMBERED = 10_000
"""Alerts whose ids the watch keeps to drop a repeat: the notifier sends one again within
its round's retry (seconds), far fewer alerts than this apart."""


async def _show_each(subscription: Subscription, shows: Sequence[Show], report: Report) -> None:
    shown: OrderedDict[uuid.UUID, None] = OrderedDict()
    async for message in subscription.messages:
        try:
            alert = Alert.model_validate_json(message.data)
        except ValidationError as exc:
            report(
                f"skipped a message on {message.subject} that is not an alert"
                f" ({one_line(validation_message(exc, 'alert'))})"
            )
            continue
        # The notifier sends a round again, same ids, when it could not confirm it (docs/
        # alerts.md): this is a receiver too, and shows each alert once.
        if alert.alert_id in shown:
            continue
        shown[alert.alert_id] = None
        if len(shown) > _REMEMBERED:
            shown.popitem(last=False)
        for show in shows:
            await show(alert)


async def run_watch(settings: Settings, shows: Sequence[Show], *, report: Report) -> None:
    """Watch with ``settings``' NATS credential until SIGINT or SIGTERM, reconnecting for
    as long as it runs (a reconnect re-subscribes)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    where = shown_url(settings.nats_url)
    connection: list[Client] = []

    async def disconnected() -> None:
        if not stop.is_set():
            report(f"lost NATS at {where}; reconnecting (alerts published meanwhile are missed)")

    async def reconnected() -> None:
        with contextlib.suppress(Exception):  # the line says so once the server has the
            await round_trip(connection[0])  # subscription again, as at the start
        report(f"reconnected to NATS at {where}; watching again")

    async with nats_client(
        settings.nats_url,
        settings,
        reconnect=True,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
    ) as nc:
        connection.append(nc)
        try:
            await watch_alerts(nc, settings.topology, shows, stop=stop, report=report)
        finally:
            stop.set()  # the disconnect that closing makes is no news
