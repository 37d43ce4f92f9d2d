"""Alert rules: the rules in force, add one, remove one (after a confirmation page).
Changes go through ``AlertEngine`` (``AlertRuleSet`` / ``AlertRuleRemoved``), applied by
the alert evaluator before the page comes back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from events import AlertRule, AlertSeverity, AlertType, BudgetScope
from events.alerts import CHANNELS
from services.api.console.forms import FormState, form_data, validate
from services.api.console.guard import Admin, ConsoleRoute, Viewer, redirect
from services.api.console.render import confirmation, flash, render
from services.api.context import services
from services.api.problems import Problem
from services.api.routes.rules import unusable_setting

__all__ = ["router"]

router = APIRouter(route_class=ConsoleRoute)

FIELDS = (
    "rule_id",
    "name",
    "alert_type",
    "threshold_percent",
    "severity",
    "channels",
    "cooldown_minutes",
    "policy_ids",
    "scopes",
)
LISTS = ("channels", "scopes")
DEFAULTS: dict[str, Any] = {
    "alert_type": AlertType.THRESHOLD_WARNING.value,
    "severity": AlertSeverity.WARNING.value,
    "channels": ["nats", "log", "ui"],
    "scopes": [],
    "cooldown_minutes": "0",
}


@router.get("/alerts/rules")
async def list_rules(request: Request, _: Viewer) -> Response:
    return await _page(request, FormState(values=dict(DEFAULTS)))


@router.post("/alerts/rules")
async def add_rule(request: Request, _: Admin) -> Response:
    values = {**{name: [] for name in LISTS}, **await form_data(request, lists=LISTS)}
    state = FormState(values=values)
    data = {name: values.get(name) or None for name in FIELDS}
    data["channels"] = values["channels"]  # none ticked: a rule that only records
    ids = [i.strip() for i in (data["policy_ids"] or "").split(",") if i.strip()]
    data["policy_ids"] = ids or None
    rule = validate(AlertRule, {k: v for k, v in data.items() if v is not None}, state, FIELDS)
    if rule is not None and (why := await unusable_setting(services(request), rule)):
        state.fail(why.partition(":")[0], why)
        rule = None
    if rule is not None and not await services(request).alerts.create_rule(rule):
        state.fail("rule_id", "a rule with this id exists: pick another")
        rule = None
    if rule is None:
        return await _page(request, state, status=422)
    flash(request, f"Rule “{rule.name}” added.")
    return redirect("/alerts/rules")


@router.get("/alerts/rules/{rule_id}/remove")
async def confirm_remove(request: Request, _: Admin, rule_id: str) -> Response:
    rule = await _existing(request, rule_id)
    return confirmation(
        request,
        verb="Remove rule",
        question=f"Remove the alert rule “{rule.name}”?",
        detail="No new alerts come from it; the alerts it raised stay listed.",
        action=f"/alerts/rules/{rule.rule_id}/remove",
        back="/alerts/rules",
    )


@router.post("/alerts/rules/{rule_id}/remove")
async def remove_rule(request: Request, _: Admin, rule_id: str) -> Response:
    rule = await _existing(request, rule_id)
    await services(request).alerts.remove_rule(rule_id)
    flash(request, f"Rule “{rule.name}” removed.")
    return redirect("/alerts/rules")


async def _existing(request: Request, rule_id: str) -> AlertRule:
    rule = next((r for r in await services(request).database.rules() if r.rule_id == rule_id), None)
    if rule is None:
        raise Problem(404, f"There is no rule {rule_id!r}; it may have been removed.")
    return rule


async def _page(request: Request, state: FormState, *, status: int = 200) -> Response:
    rules = await services(request).database.rules()
    context = {
        "title": "Alert rules",
        "rules": sorted(rules, key=lambda r: (r.name.lower(), r.rule_id)),
        "form": state,
        "types": [(t.value, t.value.replace("_", " ").capitalize()) for t in AlertType],
        "severities": [(s.value, s.value.capitalize()) for s in AlertSeverity],
        "channels": [(c, c) for c in CHANNELS],
        "scopes": [(s.value, s.value.capitalize()) for s in BudgetScope],
    }
    return render(request, "alerts/rules.html", context, status=status)
