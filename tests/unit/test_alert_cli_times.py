"""``budget alerts list`` and ``show`` say which zone their times are in (UTC), also for a
time the database handed back in its session's zone."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import pytest
from typer.testing import CliRunner

import services.cli_alerts
from events import Alert, AlertSeverity, AlertType
from events.queries import AlertDelivery, AlertsQuery, StoredAlert
from services.cli import app

RAISED = datetime(2026, 11, 3, 14, 5, 9, tzinfo=UTC)
INDIA = timezone(timedelta(hours=5, minutes=30))
"""A database session's zone: 19:35:09 there is 14:05:09 UTC."""
STORED = StoredAlert(
    alert=Alert(
        alert_id=uuid4(),
        alert_type=AlertType.LIMIT_EXCEEDED,
        severity=AlertSeverity.CRITICAL,
        rule_id="default-limit",
        rule_name="Limit",
        message="Team cap at 100%",
        raised_at=RAISED,
    ),
    acknowledged_by="ops",
    acknowledged_at=(RAISED + timedelta(minutes=1)).astimezone(INDIA),
)


class _Queries:
    async def read(self, ask: Callable[[Any], Awaitable[Any]]) -> Any:
        return await ask(None)


class _Engine:
    async def get_alert(self, alert_id: object) -> StoredAlert:
        return STORED

    async def deliveries(self, alert_id: object) -> list[AlertDelivery]:
        sent = (RAISED + timedelta(seconds=2)).astimezone(INDIA)
        return [AlertDelivery(channel="webhook", status="sent", attempts=1, sent_at=sent)]


@contextlib.asynccontextmanager
async def _queries() -> AsyncIterator[_Queries]:
    yield _Queries()


@contextlib.asynccontextmanager
async def _engine() -> AsyncIterator[_Engine]:
    yield _Engine()


async def _found(conn: object, query: AlertsQuery) -> list[StoredAlert]:
    return [STORED]


@pytest.fixture(autouse=True)
def _no_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services.cli_alerts, "database_queries", _queries)
    monkeypatch.setattr(services.cli_alerts, "find_alerts", _found)
    monkeypatch.setattr(services.cli_alerts, "_engine", _engine)


def test_alerts_list_says_its_times_are_utc() -> None:
    result = CliRunner().invoke(app, ["alerts", "list"])
    assert result.exit_code == 0, result.output
    assert result.stdout.split()[:7] == [
        str(STORED.alert.alert_id),
        "2026-11-03",
        "14:05:09",
        "UTC",
        "critical",
        "limit_exceeded",
        "acked",
    ]


def test_alerts_show_gives_every_time_in_utc() -> None:
    result = CliRunner().invoke(app, ["alerts", "show", str(STORED.alert.alert_id)])
    assert result.exit_code == 0, result.output
    assert "acknowledged by ops at 2026-11-03 14:06:09 UTC\n" in result.stdout
    assert "webhook  sent     attempts 1, sent 2026-11-03 14:05:11 UTC\n" in result.stdout


def test_alerts_show_says_why_an_alert_went_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """No delivery: its rule had no channel (or only a rebuild raised it); it said only
    'raised while rebuilding', wrong for a rule that sends nowhere."""

    class Unsent(_Engine):
        async def deliveries(self, alert_id: object) -> list[AlertDelivery]:
            return []

    @contextlib.asynccontextmanager
    async def engine() -> AsyncIterator[Unsent]:
        yield Unsent()

    monkeypatch.setattr(services.cli_alerts, "_engine", engine)
    result = CliRunner().invoke(app, ["alerts", "show", str(STORED.alert.alert_id)])
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith(
        "deliveries: none (its rule sends to no channel, or only a rebuild raised it,"
        " and a rebuild sends nothing)\n"
    )
