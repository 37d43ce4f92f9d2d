"""API keys (admins): every key with its role and state, create one (the key is shown on
the answer's page, once: only its hash is kept, and it never goes into the session, whose
cookie would carry it), revoke one after a confirmation page. The same ``KeyAdmin`` as
``/api/v1/keys``: keys are events, and the key table is their projection."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from events import ApiRole
from projections.api_keys import ApiKey
from services.api.auth import Principal
from services.api.console.forms import FormState, form_data, validate
from services.api.console.guard import Admin, ConsoleRoute, redirect
from services.api.console.render import confirmation, flash, render
from services.api.context import services
from services.api.keys import IssuedKey
from services.api.problems import Problem
from services.api.routes.keys import KeyRequest

__all__ = ["router"]

router = APIRouter(route_class=ConsoleRoute)

FIELDS = ("name", "role")
ROLES_HINT = (
    "viewer: reads everything; admin: also changes policies, rules, alerts and keys;"
    " ingest: only records usage and checks budgets (a host app)"
)


@router.get("/keys")
async def list_keys(request: Request, _: Admin) -> Response:
    return await _page(request, FormState(values={"role": ApiRole.VIEWER.value}))


@router.post("/keys")
async def create_key(request: Request, who: Admin) -> Response:
    state = FormState(values=await form_data(request))
    wanted = validate(KeyRequest, {k: state.value(k) for k in FIELDS}, state, FIELDS)
    if wanted is None:
        return await _page(request, state, status=422)
    issued = await services(request).keys.create(wanted.name, wanted.role, created_by=who.name)
    # Not a redirect: the key would have to wait in the session for the next page.
    return await _page(request, FormState(values={"role": wanted.role.value}), issued=issued)


@router.get("/keys/{key_id}/revoke")
async def confirm_revoke(request: Request, who: Admin, key_id: str) -> Response:
    key = await _live(request, key_id)
    own = " It is the key you are signed in with: you will be signed out." if _own(key, who) else ""
    return confirmation(
        request,
        verb="Revoke key",
        question=f"Revoke the {key.role.value} key “{key.name}”?",
        detail="Every request with it is refused from now on and its console sessions"
        f" end; it cannot be restored (create another).{own}",
        action=f"/keys/{key.key_id}/revoke",
        back="/keys",
    )


@router.post("/keys/{key_id}/revoke")
async def revoke_key(request: Request, who: Admin, key_id: str) -> Response:
    key = await _live(request, key_id)
    found = services(request)
    if not await found.keys.revoke(key_id, revoked_by=who.name):
        raise Problem(404, f"There is no live key {key_id!r}; it may have been revoked.")
    found.key_cache.forget()  # this process refuses it now; the others when notified
    flash(request, f"Key “{key.name}” revoked.")
    return redirect("/login" if _own(key, who) else "/keys")


def _own(key: ApiKey, who: Principal) -> bool:
    return key.key_id == who.key_id


async def _live(request: Request, key_id: str) -> ApiKey:
    found = await services(request).keys.keys(key_id)
    if not found or found[0].revoked_at is not None:
        raise Problem(404, f"There is no live key {key_id!r}; it may have been revoked.")
    return found[0]


async def _page(
    request: Request, state: FormState, *, status: int = 200, issued: IssuedKey | None = None
) -> Response:
    keys = await services(request).keys.keys()
    context = {
        "title": "API keys",
        # Live keys first, then by name: revoked ones stay listed, as the log keeps them.
        "keys": sorted(keys, key=lambda k: (k.revoked_at is not None, k.name.lower(), k.key_id)),
        "form": state,
        "roles": [(role.value, role.value.capitalize()) for role in ApiRole],
        "roles_hint": ROLES_HINT,
        "issued": issued,
    }
    return render(request, "keys.html", context, status=status)
