"""The policy editor: list, create, edit and delete (after a confirmation page).

Writes go through ``BudgetManager`` like the API's: a ``PolicySet`` or ``PolicyDeleted``
event, answered once the policies projection has applied it, so the list shown after the
redirect already has the change.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from events import BudgetPolicy
from services.api.console.forms import FormState, form_data
from services.api.console.guard import Admin, ConsoleRoute, Viewer, redirect
from services.api.console.policy_form import (
    ACTIONS,
    PERIODS,
    SCOPES,
    parse_policy,
    policy_values,
    zones,
)
from services.api.console.render import confirmation, flash, render
from services.api.context import services
from services.api.problems import Problem

__all__ = ["router"]

router = APIRouter(route_class=ConsoleRoute)


@router.get("/policies")
async def list_policies(request: Request, _: Viewer) -> Response:
    policies = await services(request).database.policies()
    policies.sort(key=lambda p: (p.name.lower(), p.policy_id))
    return render(request, "policies/list.html", {"title": "Policies", "policies": policies})


@router.get("/policies/new")
async def new_policy(request: Request, _: Admin) -> Response:
    settings = services(request).settings  # config.yaml's defaults, as the CLI takes them
    defaults = {
        "scope": "global",
        "period": "monthly",
        "action": settings.default_action,
        "soft_limit_percent": str(settings.soft_limit_percent),
    }
    return _form(request, FormState(values=defaults), None)


@router.post("/policies/new")
async def create_policy(request: Request, who: Admin) -> Response:
    policy, state = parse_policy(await form_data(request), None, services(request).settings)
    if policy is not None and not await services(request).manager.create_policy(
        policy, set_by=who.name
    ):
        state.fail("policy_id", "a policy with this id exists: pick another, or edit that one")
        policy = None
    if policy is None:
        return _form(request, state, None, status=422)
    flash(request, f"Policy “{policy.name}” created.")
    return redirect("/policies")


@router.get("/policies/{policy_id}/edit")
async def edit_policy(request: Request, _: Admin, policy_id: str) -> Response:
    policy = await _existing(request, policy_id)
    return _form(request, FormState(values=policy_values(policy)), policy)


@router.post("/policies/{policy_id}/edit")
async def save_policy(request: Request, who: Admin, policy_id: str) -> Response:
    current = await _existing(request, policy_id)
    policy, state = parse_policy(await form_data(request), policy_id, services(request).settings)
    if policy is None:
        return _form(request, state, current, status=422)
    await services(request).manager.set_policy(policy, set_by=who.name)
    flash(request, f"Policy “{policy.name}” saved.")
    return redirect("/policies")


@router.get("/policies/{policy_id}/delete")
async def confirm_delete(request: Request, _: Admin, policy_id: str) -> Response:
    policy = await _existing(request, policy_id)
    return confirmation(
        request,
        verb="Delete policy",
        question=f"Delete the policy “{policy.name}”?",
        detail="Checks stop applying it at once. Its past spend stays in the history.",
        action=f"/policies/{policy.policy_id}/delete",
        back="/policies",
    )


@router.post("/policies/{policy_id}/delete")
async def delete_policy(request: Request, who: Admin, policy_id: str) -> Response:
    policy = await _existing(request, policy_id)
    await services(request).manager.delete_policy(policy_id, deleted_by=who.name)
    flash(request, f"Policy “{policy.name}” deleted.")
    return redirect("/policies")


async def _existing(request: Request, policy_id: str) -> BudgetPolicy:
    policy = await services(request).manager.get_policy(policy_id)
    if policy is None:
        raise Problem(404, f"There is no policy {policy_id!r}; it may have been deleted.")
    return policy


def _form(
    request: Request, state: FormState, editing: BudgetPolicy | None, *, status: int = 200
) -> Response:
    context = {
        "title": f"Edit {editing.name}" if editing else "New policy",
        "form": state,
        "editing": editing,
        "scopes": SCOPES,
        "periods": PERIODS,
        "actions": ACTIONS,
        "zones": zones(),
    }
    return render(request, "policies/form.html", context, status=status)
