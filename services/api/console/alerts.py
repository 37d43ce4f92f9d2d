"""Alerts: the list with filters (newest first; new ones appear as the UI feed delivers
them), acknowledge (as the signed-in key's name) and resolve."""

from __future__ import annotations

import uuid
from functools import partial
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response

from events import AlertSeverity, AlertType
from events.queries import AlertsQuery, StoredAlert
from projections.engine.projection import Connection
from projections.queries import AlertPosition, alerts_page, count_alerts
from services.api.console.forms import FORM_ERROR, FormState, form_data, validate
from services.api.console.guard import Admin, ConsoleRoute, Viewer, redirect, safe_next
from services.api.console.render import flash, render
from services.api.context import ApiServices, services
from services.api.problems import Problem
from services.api.routes.alerts import alert_cursor, alert_position

__all__ = ["router"]

router = APIRouter(route_class=ConsoleRoute)

SHOWN = 200
"""Alerts a page lists, newest first; "Older" pages on from the last."""
FILTERS = ("policy_id", "severity", "alert_type", "acknowledged", "resolved")
SEVERITIES = [("", "Any severity"), *((s.value, s.value.capitalize()) for s in AlertSeverity)]
TYPES = [("", "Any type"), *((t.value, t.value.replace("_", " ").capitalize()) for t in AlertType)]
ACKNOWLEDGED = [("", "Acknowledged or not"), ("no", "Not acknowledged"), ("yes", "Acknowledged")]
RESOLVED = [("", "Open or resolved"), ("open", "Open"), ("resolved", "Resolved")]


@router.get("/alerts")
async def list_alerts(request: Request, _: Viewer) -> Response:
    params = request.query_params
    state = FormState(values={name: params.get(name, "") for name in FILTERS})
    data = {
        "policy_id": state.value("policy_id") or None,
        "severity": state.value("severity") or None,
        "alert_type": state.value("alert_type") or None,
        "unacknowledged_only": state.value("acknowledged") == "no",
        "acknowledged_only": state.value("acknowledged") == "yes",
        "resolved": {"open": False, "resolved": True}.get(state.value("resolved")),
        "limit": SHOWN,
    }
    query = validate(AlertsQuery, data, state, FILTERS)
    cursor = params.get("cursor")
    try:
        after = alert_position(cursor)
    except Problem:
        state.fail(FORM_ERROR, "that page is gone; start from the newest alerts")
        after = query = None
    found: list[StoredAlert] = []
    following: AlertPosition | None = None
    total = 0
    if query is not None:
        found, following, total = await services(request).database.read(
            partial(_page, query=query, after=after)
        )
    filters = {name: state.value(name) for name in FILTERS if state.value(name)}
    context = {
        "title": "Alerts",
        "form": state,
        "alerts": found,
        "total": total,
        "first_page": cursor is None,
        "newest": "/alerts" + (f"?{urlencode(filters)}" if filters else ""),
        "older": (
            f"/alerts?{urlencode({**filters, 'cursor': alert_cursor(following)})}"
            if following
            else None
        ),
        "back": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        "options": {
            "policy_id": await _policy_options(services(request), state.value("policy_id")),
            "severity": SEVERITIES,
            "alert_type": TYPES,
            "acknowledged": ACKNOWLEDGED,
            "resolved": RESOLVED,
        },
    }
    return render(request, "alerts/list.html", context)


async def _policy_options(api: ApiServices, chosen: str) -> list[tuple[str, str]]:
    """Every policy by name; one asked for that no longer exists (its alerts remain) too."""
    policies = sorted(await api.database.policies(), key=lambda p: (p.name.lower(), p.policy_id))
    options = [("", "Any policy"), *((p.policy_id, p.name) for p in policies)]
    if chosen and all(value != chosen for value, _ in options):
        options.append((chosen, f"{chosen} (deleted)"))
    return options


async def _page(
    conn: Connection, *, query: AlertsQuery, after: AlertPosition | None
) -> tuple[list[StoredAlert], AlertPosition | None, int]:
    """A page of alerts newest first, where the next starts, and how many match in all."""
    found, following = await alerts_page(conn, query, after)
    return found, following, await count_alerts(conn, query)


@router.post("/alerts/{alert_id}/acknowledge")
async def acknowledge(request: Request, who: Admin, alert_id: uuid.UUID) -> Response:
    api = services(request)
    stored = await _existing(api, alert_id)
    if stored.acknowledged_at is None:
        await api.alerts.acknowledge_alert(alert_id, who.name)
        flash(request, f"Alert acknowledged by {who.name}.")
    else:  # another tab or admin was first: theirs stands (the page may not show it yet)
        flash(request, f"Alert already acknowledged{_by(stored.acknowledged_by)}.")
    return redirect(safe_next((await form_data(request)).get("next"), "/alerts"))


@router.post("/alerts/{alert_id}/resolve")
async def resolve(request: Request, who: Admin, alert_id: uuid.UUID) -> Response:
    api = services(request)
    stored = await _existing(api, alert_id)
    if stored.resolved_at is None:
        await api.alerts.resolve_alert(alert_id, who.name)
        flash(request, "Alert resolved.")
    else:
        flash(request, f"Alert already resolved{_by(stored.resolved_by)}.")
    return redirect(safe_next((await form_data(request)).get("next"), "/alerts"))


def _by(who: str | None) -> str:
    return f" by {who}" if who else ""


async def _existing(api: ApiServices, alert_id: uuid.UUID) -> StoredAlert:
    found = await api.database.alerts(AlertsQuery(alert_id=alert_id))
    if not found:
        raise Problem(404, f"There is no alert {alert_id}.")
    return found[0]
