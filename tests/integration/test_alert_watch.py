"""``budget alerts watch`` on a real NATS: alerts as the notifier publishes them, one line
each; a malformed message skipped; a NATS restart survived; a refused subscription one
error line."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from nats.aio.client import Client

from budget.config import Settings
from budget.natsconn import connect_nats, nats_options
from events import Topology
from events.alerts import AlertSeverity, AlertType
from services.alert_watch import alert_line
from services.embedded import EmbeddedNats
from services.nats_config import NatsCredentials, write_config

from watching import an_alert, connected, publish_alert, start_watch

pytestmark = pytest.mark.integration


@pytest.fixture
async def publisher(nats_url: str) -> AsyncIterator[Client]:
    async with connected(nats_url) as client:
        yield client


async def test_watch_prints_each_alert_and_skips_a_malformed_one(
    nats_url: str, topology: Topology, publisher: Client
) -> None:
    watch = start_watch(nats_url=nats_url, topology=topology)
    try:
        await watch.line("watching")
        first = an_alert("spend reached 80% of policy 'team'")
        # A message that must not forge a line of its own in the terminal.
        second = an_alert(
            "limit\nexceeded \x1b[2J for 'ops'",
            severity=AlertSeverity.CRITICAL,
            alert_type=AlertType.LIMIT_EXCEEDED,
        )
        await publish_alert(publisher, topology, first)
        await publisher.publish(f"{topology.prefix}.alerts.warning.anomaly", b"{not json")
        await publisher.flush()
        await publish_alert(publisher, topology, second)
        shown = await watch.line("for 'ops'")
        assert watch.lines[shown] == alert_line(second)
        assert "critical limit_exceeded" in " ".join(watch.lines[shown].split())
        assert "limit exceeded [2J for 'ops'" in " ".join(watch.lines[shown].split())
        assert "\x1b" not in watch.lines[shown]
        before = watch.lines[:shown]
        assert before.count(alert_line(first)) == 1
        skipped = [line for line in before if "not an alert" in line]
        assert len(skipped) == 1, before
        assert skipped[0].startswith(f"budget: skipped a message on {topology.prefix}.alerts.")
        assert before.index(alert_line(first)) < before.index(skipped[0])
        assert await watch.stop() == 0
    finally:
        watch.kill()


async def test_an_alert_the_notifier_sends_again_is_shown_once(
    nats_url: str, topology: Topology, publisher: Client
) -> None:
    """The notifier sends a round of NATS alerts again when it cannot confirm it (the
    flush failed, or it died before recording it), with the same alert id: the watch is
    their receiver, and drops the repeat (one line, one desktop notification)."""
    watch = start_watch(nats_url=nats_url, topology=topology)
    try:
        await watch.line("watching")
        repeated, after = an_alert("sent twice"), an_alert("sent after it")
        await publish_alert(publisher, topology, repeated)
        await publish_alert(publisher, topology, repeated)
        await publish_alert(publisher, topology, after)
        shown = await watch.line(alert_line(after))
        assert watch.lines[:shown].count(alert_line(repeated)) == 1, watch.lines
        assert await watch.stop() == 0
    finally:
        watch.kill()


async def test_watch_survives_a_nats_restart(
    embedded_nats: EmbeddedNats, topology: Topology
) -> None:
    watch = start_watch(nats_url=embedded_nats.url, topology=topology)
    try:
        await watch.line("watching")
        before = an_alert("before the restart")
        async with connected(embedded_nats.url) as nc:
            await publish_alert(nc, topology, before)
        await watch.line(alert_line(before))
        embedded_nats.restart()
        back = await watch.line("watching again")
        assert any("lost NATS" in line for line in watch.lines[:back])
        after = an_alert("after the restart")
        async with connected(embedded_nats.url) as nc:
            await publish_alert(nc, topology, after)
        await watch.line(alert_line(after), after=back)
        assert await watch.stop() == 0
    finally:
        watch.kill()


class Secured(NamedTuple):
    server: EmbeddedNats
    topology: Topology
    credentials: NatsCredentials


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A nats-server with the default users (service, host, alerts) and permissions."""
    data_dir = tmp_path_factory.mktemp("watch-secured")
    topology = Topology(prefix=f"t{uuid.uuid4().hex[:10]}")
    config = write_config(data_dir, Settings(subject_prefix=topology.prefix))
    with EmbeddedNats(data_dir / "nats", config_file=config, stop_timeout=5.0) as server:
        yield Secured(server, topology, NatsCredentials(data_dir))


async def test_the_alerts_credential_watches_alerts_the_service_publishes(
    secured: Secured,
) -> None:
    server, topology, credentials = secured
    watch = start_watch(nats_url=server.url, topology=topology, **credentials.env("alerts"))
    try:
        await watch.line("watching")
        alert = an_alert("seen by the alerts user")
        service = credentials.settings_for(
            "service", Settings(nats_url=server.url, subject_prefix=topology.prefix)
        )
        nc = await connect_nats(server.url, within=5, **nats_options(service))
        try:
            await publish_alert(nc, topology, alert)
        finally:
            await nc.close()
        await watch.line(alert_line(alert))
        assert await watch.stop() == 0
    finally:
        watch.kill()


async def test_a_refused_subscription_is_one_error_line(
    secured: Secured,
) -> None:
    server, topology, credentials = secured
    watch = start_watch(nats_url=server.url, topology=topology, **credentials.env("host"))
    try:
        assert await watch.ended() == 2
        assert watch.lines == [
            f"budget: the NATS user 'host' may not subscribe to {topology.prefix}.alerts.>;"
            " only a 'service' or 'alerts' credential may (BUDGET_NATS_USER and"
            " BUDGET_NATS_PASSWORD_FILE, or nats_user and nats_password_file in config.yaml;"
            " see docs/security.md)"
        ]
    finally:
        watch.kill()


async def test_a_wrong_password_is_one_error_line(secured: Secured, tmp_path: Path) -> None:
    server, topology, _ = secured
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    watch = start_watch(
        nats_url=server.url,
        topology=topology,
        BUDGET_NATS_USER="alerts",
        BUDGET_NATS_PASSWORD_FILE=str(wrong),
    )
    try:
        assert await watch.ended() == 2
        assert len(watch.lines) == 1, watch.lines
        assert watch.lines[0].startswith(
            f"budget: NATS at {server.url} refused the credential (user 'alerts')"
        )
    finally:
        watch.kill()
