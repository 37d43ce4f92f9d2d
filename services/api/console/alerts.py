"""Alerts: the list with filters (newest first; new ones appear as the UI feed delivers
them), acknowledge (as the signed-in key's name) and resolve."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response

from events import AlertSeverity, AlertType
from events.queries import AlertsQuery
from services.api.console.forms import FormState, form_data, validate
from services.api.console.guard import Admin, ConsoleRoute, Viewer, redirect, safe_next
from services.api.console.render import flash, render
from services.api.context import ApiServices, services
from services.api.problems import Problem

__all__ = ["router"]

router = APIRouter(route_class=ConsoleRoute)

SHOWN = 200
"""Alerts a page lists (the newest); narrower filters find older ones."""
_FETCH = 10_000  # the projection lists oldest first: fetch all there are, show the newest
FILTERS = ("severity", "alert_type", "acknowledged", "resolved")
SEVERITIES = [("", "Any severity"), *((s.value, s.value.capitalize()) for s in AlertSeverity)]
TYPES = [("", "Any type"), *((t.value, t.value.replace("_", " ").capitalize()) for t in AlertType)]
ACKNOWLEDGED = [("", "Acknowledged or not"), ("no", "Not acknowledged"), ("yes", "Acknowledged")]
RESOLVED = [("", "Open or resolved"), ("open", "Open"), ("resolved", "Resolved")]


@router.get("/alerts")
async def list_alerts(request: Request, _: Viewer) -> Response:
    params = request.query_params
    state = FormState(values={name: params.get(name, "") for name in FILTERS})
    data = {
        "severity": state.value("severity") or None,
        "alert_type": state.value("alert_type") or None,
        "unacknowledged_only": state.value("acknowledged") == "no",
        "resolved": {"open": False, "resolved": True}.get(state.value("resolved")),
        "limit": _FETCH,
    }
    query = validate(AlertsQuery, data, state, FILTERS)
    found = await services(request).database.alerts(query) if query else []
    if state.value("acknowledged") == "yes":
        found = [a for a in found if a.acknowledged_at is not None]
    context = {
        "title": "Alerts",
        "form": state,
        "alerts": found[::-1][:SHOWN],
        "total": len(found),
        "back": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        "options": {
            "severity": SEVERITIES,
            "alert_type": TYPES,
            "acknowledged": ACKNOWLEDGED,
            "resolved": RESOLVED,
        },
    }
    return render(request, "alerts/list.html", context)


@router.post("/alerts/{alert_id}/acknowledge")
async def acknowledge(request: Request, who: Admin, alert_id: uuid.UUID) -> Response:
    api = services(request)
    await _existing(api, alert_id)
    await api.alerts.acknowledge_alert(alert_id, who.name)
    flash(request, f"Alert acknowledged by {who.name}.")
    return redirect(safe_next((await form_data(request)).get("next"), "/alerts"))


@router.post("/alerts/{alert_id}/resolve")
async def resolve(request: Request, who: Admin, alert_id: uuid.UUID) -> Response:
    api = services(request)
    await _existing(api, alert_id)
    await api.alerts.resolve_alert(alert_id, who.name)
    flash(request, "Alert resolved.")
    return redirect(safe_next((await form_data(request)).get("next"), "/alerts"))


async def _existing(api: ApiServices, alert_id: uuid.UUID) -> None:
    if not await api.database.alerts(AlertsQuery(alert_id=alert_id)):
        raise Problem(404, f"There is no alert {alert_id}.")
