"""The dashboard: this month's spend against every budget, where it goes, the trend with
its forecast, recent calls and active alerts.

The page polls ``/dashboard/live`` every 2 s; that answer holds the panels that change
with usage (totals, budget bars, top spenders, recent calls), each swapped into place by
id (htmx out-of-band swaps). Alerts come from ``/dashboard/alerts`` when the live feed
delivers one, and every 15 s. The chart is drawn once per page load.

After an upgrade that changed a read model's tables, the panels it feeds say it is being
rebuilt (``Rebuilding``) until the rebuild goes live, and the others still answer: the
report rollups feed the month's totals, the top spenders, the chart and the ranking of a
per-key policy's bars; the history feeds the recent calls.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request, Response

from budget.periods import Period, period_bounds
from budget.report_format import Report
from events import BudgetScope, utc_now
from events.queries import AlertsQuery, ReportQuery, SpendQuery, SpendRow, StoredAlert
from projections.engine.projection import Connection
from projections.history_pages import HistoryFilter, history_page
from projections.queries import alerts_page, count_alerts
from projections.readable import Rebuilding, readable_position
from projections.report_queries import ReportBuilder
from services.api.console.budgets import PolicyBars, budget_bars
from services.api.console.charts import spend_chart
from services.api.console.guard import ConsoleRoute, Viewer
from services.api.console.render import render
from services.api.context import ApiServices, services

__all__ = ["router"]

router = APIRouter(route_class=ConsoleRoute)

RECENT_CALLS = 10
ALERTS_SHOWN = 5
TOP = 5
BREAKDOWN = (
    ("provider", "Providers"),
    ("model", "Models"),
    ("user", "Users"),
    ("project", "Projects"),
)
HISTORY_FILTERS = {
    "provider": "provider",
    "model": "model",
    "user": "user_id",
    "project": "project_id",
}
"""The history's filter for each top spender's scope: a name leads to its calls."""


@router.get("/")
async def dashboard(request: Request, _: Viewer) -> Response:
    api = services(request)
    context = {**await live_context(api), **await alerts_context(api)}
    context.update(title="Dashboard", chart_data=None, month_forecast=None)
    if context["rollups_note"] is None:
        try:
            trend = await api.database.report(ReportQuery(kind="trend", days=30))
            # days=1: the projection runs to the end of the month whatever the date.
            projection = await api.database.report(ReportQuery(kind="projection", days=1))
        except Rebuilding as exc:  # since the live panels read: the chart says it too
            context["rollups_note"] = str(exc)
        else:
            context.update(
                chart_data=spend_chart(trend, projection),
                month_forecast=_month_forecast(projection, context["now"]),
            )
    return render(request, "dashboard/page.html", context)


@router.get("/dashboard/live")
async def live(request: Request, _: Viewer) -> Response:
    return render(request, "dashboard/live.html", await live_context(services(request)))


@router.get("/dashboard/alerts")
async def alerts(request: Request, _: Viewer) -> Response:
    return render(request, "dashboard/alerts.html", await alerts_context(services(request)))


async def live_context(api: ApiServices) -> dict[str, Any]:
    """What changes with every call: totals, budgets, top spenders, recent calls."""
    now = utc_now()
    today = await api.database.spend(SpendQuery(period="daily", scope=BudgetScope.GLOBAL, at=now))

    async def panels(
        conn: Connection,
    ) -> tuple[dict[str, list[SpendRow]] | str, list[PolicyBars], list[dict[str, Any]] | str]:
        # Each read model being rebuilt leaves its panels empty and says why there; the
        # other panels still answer.
        by_scope: dict[str, list[SpendRow]] | str
        try:
            await readable_position(conn, "reports")
            by_scope = await _month_by_scope(conn, now)
        except Rebuilding as exc:
            by_scope = str(exc)
        recent: list[dict[str, Any]] | str
        try:
            recent, _ = await history_page(conn, HistoryFilter(), limit=RECENT_CALLS)
        except Rebuilding as exc:
            recent = str(exc)
        return by_scope, await budget_bars(conn, now), recent

    # ``read``: once more on a fresh connection after a database restart
    by_scope, bars, recent = await api.database.read(panels)
    rollups_note = by_scope if isinstance(by_scope, str) else None
    month = {} if isinstance(by_scope, str) else by_scope
    total = next(iter(month.get(BudgetScope.GLOBAL.value, [])), None)
    return {
        "now": now,
        "month": total,
        "today": _global(today),
        "budgets": bars,
        "breakdown": [
            (label, HISTORY_FILTERS[scope], month.get(scope, [])[:TOP])
            for scope, label in BREAKDOWN
        ],
        "month_cost": total.cost if total else Decimal(0),
        "rollups_note": rollups_note,
        "recent": [] if isinstance(recent, str) else recent,
        "recent_note": recent if isinstance(recent, str) else None,
    }


async def _month_by_scope(conn: Connection, now: datetime) -> dict[str, list[SpendRow]]:
    """This calendar month's totals per scope and key (keyed as policies count spend: a
    model across its providers), dearest first, from the report rollups: a few thousand
    daily rows however many calls the month holds (summing its quarter-hour spend buckets
    instead took seconds by the month's end at 10M events)."""
    start, end = period_bounds(Period.MONTHLY, now)
    builder = ReportBuilder(conn)
    found: dict[str, list[SpendRow]] = {}
    for scope in BudgetScope:
        found[scope.value] = [
            SpendRow(
                scope=scope.value,
                scope_key=t.key1,
                period="monthly",
                period_start=start.date(),
                cost=t.cost,
                requests=t.requests,
                unpriced_requests=t.unpriced_requests,
                input_tokens=t.input_tokens,
                output_tokens=t.output_tokens,
            )
            # to the month's end, as today's total (spend) counts: a call stamped a few
            # minutes ahead (within max_clock_skew) is this month's too
            for t in await builder.scope_totals(conn, scope, start, end)
        ]
    return found


async def alerts_context(api: ApiServices) -> dict[str, Any]:
    """The newest open alerts, and how many are open."""
    query = AlertsQuery(resolved=False, limit=ALERTS_SHOWN)

    async def newest_and_count(conn: Connection) -> tuple[list[StoredAlert], int]:
        newest, _ = await alerts_page(conn, query)
        return newest, await count_alerts(conn, query)

    newest, total = await api.database.read(newest_and_count)
    return {"alerts": newest, "alerts_total": total}


def _global(rows: list[SpendRow]) -> SpendRow | None:
    return next((r for r in rows if r.scope == BudgetScope.GLOBAL.value), None)


def _month_forecast(projection: Report, now: datetime) -> dict[str, Any] | None:
    """This month's actual plus forecast total, with its interval (None without history)."""
    if len(projection.tables) < 2:
        return None
    month = now.date().replace(day=1)
    return next((r for r in projection.tables[1].records() if r["month"] == month), None)
