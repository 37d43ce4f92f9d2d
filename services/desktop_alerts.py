"""Alerts as desktop notifications (``budget alerts watch --desktop``) through
desktop-notifier: on Linux a ``Notify`` call to the freedesktop notification service on
the D-Bus session bus (any notification daemon: the desktop's own, dunst,
notification-daemon), the notification centre on macOS and Windows.

An optional extra: ``pip install 'budget-manager[desktop]'``. The library logs a failed
notification and carries on; here each one that was not shown is reported in one line.
"""

from __future__ import annotations

import asyncio
import functools
import html
import sys
from collections.abc import Callable

from budget.one_line import one_line
from events import Alert
from events.alerts import AlertSeverity

__all__ = ["DesktopAlerts"]


class DesktopAlerts:
    """A ``Show`` (services.alert_watch): each alert one notification, its urgency from
    the alert's severity. Notifications go out from a task of their own, one at a time,
    so a notification service slow to answer (or never: each waits ``timeout``) holds
    back neither the terminal nor the next alerts; past ``backlog`` waiting, an alert is
    reported and not shown on the desktop."""

    def __init__(
        self, report: Callable[[str], None], *, timeout: float = 10.0, backlog: int = 100
    ) -> None:
        try:
            from desktop_notifier import DesktopNotifier, Urgency
        except ImportError:
            raise ValueError(
                "--desktop needs the desktop extra: pip install 'budget-manager[desktop]'"
            ) from None
        self._notifier = DesktopNotifier(app_name="Budget Manager", app_icon=None)
        self._urgency = {
            AlertSeverity.INFO: Urgency.Low,
            AlertSeverity.WARNING: Urgency.Normal,
            AlertSeverity.CRITICAL: Urgency.Critical,
        }
        self._report = report
        self._timeout = timeout
        # The freedesktop servers read a body as markup (the desktops' own, dunst and
        # notification-daemon have body-markup): a user id with "<" or "&" in an alert
        # would be taken as a tag there. The other platforms show text as it is.
        self._body: Callable[[str], str] = (
            functools.partial(html.escape, quote=False) if sys.platform == "linux" else str
        )
        self._waiting: asyncio.Queue[Alert] = asyncio.Queue(backlog)
        self._sending: asyncio.Task[None] | None = None

    async def __call__(self, alert: Alert) -> None:
        if self._sending is None:  # started in the watch's own event loop
            self._sending = asyncio.create_task(self._send_each())
        try:
            self._waiting.put_nowait(alert)
        except asyncio.QueueFull:
            self._not_shown(
                alert, f"{self._waiting.maxsize} alerts wait for the notification service"
            )

    async def _send_each(self) -> None:
        while True:
            alert = await self._waiting.get()
            try:
                await self._send(alert)
            except Exception as exc:  # one that fails oddly stops none of the next
                self._not_shown(alert, f"{type(exc).__name__}: {exc}")

    async def _send(self, alert: Alert) -> None:
        dispatched = asyncio.Event()
        try:
            async with asyncio.timeout(self._timeout):
                await self._notifier.send(
                    title=f"Budget {alert.severity.value}: {alert.alert_type.value}",
                    message=self._body(one_line(alert.message)),
                    urgency=self._urgency[alert.severity],
                    on_dispatched=dispatched.set,
                )
        except TimeoutError:
            pass
        if not dispatched.is_set():
            self._not_shown(
                alert,
                "no notification service answered on the desktop session (on Linux: a"
                " notification daemon on the D-Bus session bus, DBUS_SESSION_BUS_ADDRESS)",
            )

    def _not_shown(self, alert: Alert, why: str) -> None:
        self._report(f"no desktop notification for alert {alert.alert_id}: {one_line(why)}")
