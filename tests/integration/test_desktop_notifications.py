"""``budget alerts watch --desktop`` on a real desktop session: an alert published on NATS
as the notifier publishes it becomes a ``Notify`` call on the session bus, which the
notification daemon answers (desktop_session.py); without a notification service, or with
one that never answers, every alert is still printed as it arrives."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from events import Topology
from events.alerts import AlertSeverity, AlertType
from services.alert_watch import alert_line

from desktop_session import Bus, DesktopSession, desktop_session, missing_programs
from support import wait_for
from watching import an_alert, connected, publish_alert, start_watch

pytestmark = pytest.mark.integration


@pytest.fixture
def session(tmp_path: Path) -> Iterator[DesktopSession]:
    missing = missing_programs()
    assert not missing, f"{missing}: ./run-tests installs them (apt-get)"
    with desktop_session(tmp_path) as started:
        yield started


async def test_each_alert_becomes_a_notification_on_the_session_bus(
    session: DesktopSession, nats_url: str, topology: Topology
) -> None:
    watch = start_watch("--desktop", nats_url=nats_url, topology=topology, **session.env)
    try:
        await watch.line("watching")
        alert = an_alert(
            f"policy <b>team</b> & {uuid.uuid4().hex[:8]} reached 100% of its limit",
            severity=AlertSeverity.CRITICAL,
            alert_type=AlertType.LIMIT_EXCEEDED,
        )
        async with connected(nats_url) as nc:
            await publish_alert(nc, topology, alert)

        seen: list[Bus] = []

        # The body is markup to the daemon: the alert's text is escaped, shown as it is.
        body = alert.message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

        async def notified() -> bool:
            """the daemon answered a Notify call with the alert's message"""
            bus = session.bus()
            seen[:] = [bus]
            return any(c.body == body and bus.answered(c) for c in bus.calls)

        await wait_for(notified)
        (call,) = [c for c in seen[0].calls if c.body == body]
        assert call.app_name == "Budget Manager"
        assert call.summary == "Budget critical: limit_exceeded"
        assert call.urgency == 2  # critical
        await watch.line(alert_line(alert))
        assert not any("no desktop notification" in line for line in watch.lines)
        assert await watch.stop() == 0
    finally:
        watch.kill()


async def test_without_a_notification_service_alerts_are_still_printed(
    nats_url: str, topology: Topology, tmp_path: Path
) -> None:
    nobody = f"unix:path={tmp_path / 'no-bus'}"
    watch = start_watch(
        "--desktop", nats_url=nats_url, topology=topology, DBUS_SESSION_BUS_ADDRESS=nobody
    )
    try:
        await watch.line("watching")
        first, second = an_alert("first"), an_alert("second")
        async with connected(nats_url) as nc:
            await publish_alert(nc, topology, first)
            await publish_alert(nc, topology, second)
        await watch.line(alert_line(second))
        assert watch.lines.count(alert_line(first)) == 1
        failed = [line for line in watch.lines if "no desktop notification" in line]
        assert len(failed) == 2, watch.lines
        assert f"for alert {first.alert_id}:" in failed[0]
        assert f"for alert {second.alert_id}:" in failed[1]
        assert await watch.stop() == 0
    finally:
        watch.kill()


async def test_a_notification_service_that_never_answers_holds_back_no_alert(
    session: DesktopSession, nats_url: str, topology: Topology
) -> None:
    session.hang_daemon()
    watch = start_watch("--desktop", nats_url=nats_url, topology=topology, **session.env)
    try:
        await watch.line("watching")
        first, second = an_alert("first"), an_alert("second")
        async with connected(nats_url) as nc:
            await publish_alert(nc, topology, first)
            await publish_alert(nc, topology, second)
        await watch.line(alert_line(second))
        # printed while the first one's notification still waits for an answer
        assert not any("no desktop notification" in line for line in watch.lines), watch.lines
        await watch.line(f"no desktop notification for alert {first.alert_id}:")
        await watch.line(f"no desktop notification for alert {second.alert_id}:")
        assert await watch.stop() == 0
    finally:
        watch.kill()
