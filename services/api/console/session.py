"""Signing in with an API key and signing out.

The key travels once, in the sign-in form's body; the session cookie holds only the key's
id (``services.api.auth.sign_in``), so no page, URL or log ever carries the key.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from events import ApiRole
from services.api.auth import READ, authenticate, csrf_matches, sign_in, sign_out
from services.api.console.forms import FormState, form_data
from services.api.console.guard import ConsoleRoute, ViewerWrite, redirect, safe_next
from services.api.console.render import render

__all__ = ["router"]

router = APIRouter(route_class=ConsoleRoute)

INGEST_REFUSED = (
    "This is an ingest key: it may record usage and check budgets through the API, but"
    " not read spend or change policies. Sign in with a viewer or admin key."
)


@router.get("/login")
async def login_form(request: Request, next: str = "/") -> Response:
    signed_in = await authenticate(request)
    if signed_in is not None and signed_in.session and signed_in.role in READ:
        return redirect(safe_next(next))
    return _page(request, FormState(values={"next": safe_next(next)}))


@router.post("/login")
async def login(request: Request) -> Response:
    values = await form_data(request)
    state = FormState(values={"next": safe_next(values.get("next"))})
    if not csrf_matches(request.session.get("csrf"), (await request.form()).get("csrf_token")):
        state.fail("key", "The sign-in form had expired; enter the key again.")
        return _page(request, state, status=403)
    principal = await sign_in(request, values.get("key", ""))
    if principal is None:
        state.fail("key", "No live key matches: check it, or ask an admin for a new one.")
        return _page(request, state, status=401)
    if principal.role is ApiRole.INGEST:
        await sign_out(request)
        state.fail("key", INGEST_REFUSED)
        return _page(request, state, status=403)
    return redirect(state.values["next"])


@router.post("/logout")
async def logout(request: Request, _: ViewerWrite) -> Response:
    await sign_out(request)
    return redirect("/login")


def _page(request: Request, state: FormState, *, status: int = 200) -> Response:
    return render(request, "login.html", {"title": "Sign in", "form": state}, status=status)
