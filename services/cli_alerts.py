"""``budget alerts list|show|ack|resolve|watch``."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Annotated

import typer

from budget.alerts import AlertEngine, StoredAlert
from budget.one_line import one_line
from events import Alert
from events.policy import PolicyId
from events.queries import MAX_ALERTS, AlertsQuery
from projections.engine.projection import Connection
from projections.queries import count_alerts, find_alerts
from services.alert_watch import Show, alert_line, run_watch, utc_time
from services.cli_context import checked, database_queries, settings, tracker

__all__ = ["alerts_app"]

alerts_app = typer.Typer(no_args_is_help=True)


@contextlib.asynccontextmanager
async def _engine() -> AsyncIterator[AlertEngine]:
    async with tracker() as started, database_queries() as queries:
        yield AlertEngine(settings(), started, queries=queries)


@alerts_app.command("list")
def list_alerts(
    policy: Annotated[
        str | None, typer.Option(callback=checked(PolicyId), help="only this policy's alerts")
    ] = None,
    unacknowledged: Annotated[bool, typer.Option(help="only those nobody acknowledged")] = False,
    resolved: Annotated[bool, typer.Option(help="include resolved alerts")] = False,
    limit: Annotated[
        int,
        typer.Option(min=1, max=MAX_ALERTS, help=f"the newest this many (up to {MAX_ALERTS})"),
    ] = 1000,
) -> None:
    """The newest alerts, oldest first, their times in UTC: unresolved ones unless
    --resolved. Says on stderr when more match than --limit lets through."""
    query = AlertsQuery(
        policy_id=policy,
        unacknowledged_only=unacknowledged,
        resolved=None if resolved else False,
        limit=limit,
    )

    async def newest(conn: Connection) -> tuple[list[StoredAlert], int]:
        """The alerts to list, and how many match."""
        found = await find_alerts(conn, query)
        return found, len(found) if len(found) < limit else await count_alerts(conn, query)

    async def go() -> tuple[list[StoredAlert], int]:
        async with database_queries() as queries:
            return await queries.read(newest)

    found, matching = asyncio.run(go())
    if not found:
        typer.echo(_none_listed(policy, unacknowledged=unacknowledged, resolved=resolved))
    for stored in found:
        state = "resolved" if stored.resolved_at else "acked" if stored.acknowledged_at else "open"
        typer.echo(f"{stored.alert.alert_id}  {alert_line(stored.alert, state)}")
    if matching > len(found):  # after the list, where a terminal still shows it
        typer.echo(
            f"budget: the newest {len(found)} of {matching} alerts; --limit shows more"
            f" (up to {MAX_ALERTS}), the console and GET /api/v1/alerts page through all",
            err=True,
        )


def _none_listed(policy: str | None, *, unacknowledged: bool, resolved: bool) -> str:
    """That ``list`` found none, saying what it left out: a bare "no alerts" read as if
    none had been raised, where all were resolved."""
    words = ["no", *(["unacknowledged"] if unacknowledged else [])]
    words += ["alerts" if resolved else "unresolved alerts"]
    words += [f"of policy {policy}"] if policy else []
    said = " ".join(words)
    return said if resolved else f"{said}; --resolved lists resolved ones too"


@alerts_app.command("show")
def show_alert(alert_id: Annotated[uuid.UUID, typer.Argument(help="the alert's id")]) -> None:
    """One alert as JSON, with its state and its delivery on each channel."""

    async def go() -> tuple[StoredAlert | None, list[str]]:
        async with _engine() as engine:
            stored = await engine.get_alert(alert_id)
            deliveries = await engine.deliveries(alert_id)
        lines = [
            f"{d.channel:<8} {d.status:<8} attempts {d.attempts}"
            + (f", sent {utc_time(d.sent_at)}" if d.sent_at else "")
            + (f", last error: {one_line(d.last_error)}" if d.last_error else "")
            for d in deliveries
        ]
        return stored, lines

    stored, lines = asyncio.run(go())
    if stored is None:
        raise ValueError(f"no alert with id {alert_id}; see `budget alerts list --resolved`")
    typer.echo(stored.alert.model_dump_json(indent=2))
    if stored.acknowledged_at:
        who = one_line(stored.acknowledged_by or "")
        typer.echo(f"acknowledged by {who} at {utc_time(stored.acknowledged_at)}")
    if stored.resolved_at:
        who = f" by {one_line(stored.resolved_by)}" if stored.resolved_by else ""
        typer.echo(f"resolved{who} at {utc_time(stored.resolved_at)}")
    typer.echo(
        "deliveries:"
        if lines
        else "deliveries: none (its rule sends to no channel, or only a rebuild raised it,"
        " and a rebuild sends nothing)"
    )
    for line in lines:
        typer.echo(f"  {line}")


@alerts_app.command("ack")
def acknowledge(
    alert_id: Annotated[uuid.UUID, typer.Argument(help="the alert's id")],
    by: Annotated[str, typer.Option(help="who acknowledges it")],
) -> None:
    """Acknowledge an alert (an AlertAcknowledged event). One already acknowledged keeps
    its first acknowledgement, and says by whom."""
    _change(
        alert_id,
        lambda engine: engine.acknowledge_alert(alert_id, by),
        "acknowledged",
        lambda stored: (stored.acknowledged_by, stored.acknowledged_at),
    )


@alerts_app.command("resolve")
def resolve(
    alert_id: Annotated[uuid.UUID, typer.Argument(help="the alert's id")],
    by: Annotated[str | None, typer.Option(help="who resolves it")] = None,
) -> None:
    """Resolve an alert (an AlertResolved event). One already resolved keeps its first
    resolution, and says by whom."""
    _change(
        alert_id,
        lambda engine: engine.resolve_alert(alert_id, by),
        "resolved",
        lambda stored: (stored.resolved_by, stored.resolved_at),
    )


def _change(
    alert_id: uuid.UUID,
    action: Callable[[AlertEngine], Awaitable[bool]],
    done: str,
    earlier: Callable[[StoredAlert], tuple[str | None, datetime | None]],
) -> None:
    """``action`` on the alert, unless it was ``done`` already (``earlier``: by whom and
    when): the engine would keep that, and the user learns whose it is."""

    async def go() -> StoredAlert | None:
        async with _engine() as engine:
            stored = await engine.get_alert(alert_id)
            if stored is None or earlier(stored)[1] is not None:
                return stored
            return stored if await action(engine) else None

    stored = asyncio.run(go())
    if stored is None:
        raise ValueError(f"no alert with id {alert_id}; see `budget alerts list --resolved`")
    who, at = earlier(stored)
    if at is None:
        typer.echo(f"alert {alert_id} {done}")
    else:
        by = f" by {one_line(who)}" if who else ""
        typer.echo(f"alert {alert_id} was already {done}{by} at {utc_time(at)}; unchanged")


@alerts_app.command("watch")
def watch(
    desktop: Annotated[
        bool,
        typer.Option(
            "--desktop",
            help="also show each as a desktop notification (needs the `desktop` extra)",
        ),
    ] = False,
) -> None:
    """Print each alert as the notifier publishes it on NATS (time UTC, severity, type,
    message), until Ctrl-C or SIGTERM. Connect as the `alerts` NATS user where the server
    has users (docs/alerts.md)."""

    def report(line: str) -> None:
        typer.echo(f"budget: {line}", err=True)

    async def terminal(alert: Alert) -> None:
        typer.echo(alert_line(alert))

    shows: list[Show] = [terminal]
    if desktop:
        from services.desktop_alerts import DesktopAlerts  # the optional extra's library

        shows.append(DesktopAlerts(report))
    asyncio.run(run_watch(settings(), shows, report=report))
