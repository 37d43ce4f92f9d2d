"""Who may see a console page, and what a browser gets when they may not.

The roles are the API's (``services.api.auth``): viewers and admins read, admins write,
ingest keys never sign in. A visitor without a session is sent to ``/login`` with a 303
(an htmx request gets ``HX-Redirect`` instead, so a poll does not swap the sign-in page
into a panel); a refusal is an HTML page with the API's status and reason. Every page
read counts against its key's read limits, as the JSON API's reads do
(``services.api.limits``): past them the page is a 429 saying so, with ``Retry-After``.
Changes (POSTs) are not limited, as in the API. Every console answer is ``no-store``
(pages show spend and keys' names) and carries a strict CSP.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute

from services.api.auth import ADMIN, READ, Principal, authenticate, require, sign_out
from services.api.console.render import render
from services.api.limits import admitted
from services.api.problems import OUTAGES, Problem, field_errors, outage_problem

__all__ = [
    "PAGE_HEADERS",
    "Admin",
    "ConsoleRoute",
    "SignInRequired",
    "Viewer",
    "ViewerWrite",
    "error_page",
    "redirect",
    "safe_next",
]

# Scripts, styles and connections only from this origin; no frames, no plugins. Chart.js
# and htmx style elements through the CSSOM, which CSP allows; htmx's own <style> is off
# (see base.html's htmx-config) and its rules live in console.css.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self';"
    " frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


class SignInRequired(Exception):
    """Raised by a page's dependency: the visitor has no usable session."""


class ConsoleRoute(APIRoute):
    """Turns sign-in and refusal exceptions into pages, and adds the console's headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired:
                response = _to_sign_in(request)
            except Problem as problem:
                response = error_page(request, problem.status, problem.title, problem.detail)
                response.headers.update(problem.headers)  # Retry-After
            except OUTAGES as exc:  # a page, not the API's JSON, while a server is away
                outage = outage_problem(exc)
                response = error_page(request, outage.status, outage.title, outage.detail)
            except RequestValidationError as exc:
                errors = field_errors(exc.errors())
                detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
                response = error_page(request, 422, "Invalid request", detail)
            response.headers.update(PAGE_HEADERS)
            return response

        return route


def _to_sign_in(request: Request) -> Response:
    if request.headers.get("hx-request"):
        # A panel's refresh: back to the page it refreshes (htmx names it), not to the
        # panel's own fragment, which is no page to land on.
        return Response(status_code=204, headers={"HX-Redirect": _sign_in_to(_page_of(request))})
    wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(_sign_in_to(wanted if request.method == "GET" else "/"), 303)


def _sign_in_to(wanted: str) -> str:
    return "/login" if wanted == "/" else "/login?next=" + quote(wanted, safe="")


def _page_of(request: Request) -> str:
    """The path and query of the page an htmx request came from, when it is on this site."""
    current = urlsplit(request.headers.get("hx-current-url", ""))
    if (current.scheme, current.netloc) != (request.url.scheme, request.url.netloc):
        return "/"
    return safe_next(current.path + (f"?{current.query}" if current.query else ""))


def error_page(request: Request, status: int, title: str, detail: str) -> Response:
    return render(request, "error.html", {"title": title, "detail": detail}, status=status)


def redirect(url: str) -> RedirectResponse:
    """After a form's POST: the browser GETs ``url`` (so a reload does not post again)."""
    return RedirectResponse(url, status_code=303)


def safe_next(value: object, default: str = "/") -> str:
    """A path on this site to return to; anything else (another host) is ``default``."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return default
    return default if "\\" in value or any(ord(c) < 32 for c in value) else value


async def _signed_in(request: Request) -> Principal:
    principal = await authenticate(request)
    if principal is None:
        raise SignInRequired
    if principal.role not in READ:  # the key's role changed under a live session
        await sign_out(request)
        raise SignInRequired
    request.state.principal = principal
    return principal


_read_write = require(*READ)
_admin_write = require(*ADMIN)
_SAFE = frozenset({"GET", "HEAD"})


def _page_read(
    request: Request, principal: Principal
) -> contextlib.AbstractAsyncContextManager[None]:
    """A page read counts under the key's read limits until it is sent; a change does not."""
    if request.method in _SAFE:
        return admitted(request, "reads", principal)
    return contextlib.nullcontext()


async def viewer(request: Request) -> AsyncIterator[Principal]:
    """Pages: signed in (else to /login) with a key that may read, within its limits."""
    principal = await _signed_in(request)
    async with _page_read(request, principal):
        yield principal


async def viewer_write(request: Request) -> Principal:
    """A viewer's own POST (signing out): signed in, and the form's CSRF token checked."""
    await _signed_in(request)
    return await _read_write(request)


async def admin(request: Request) -> AsyncIterator[Principal]:
    """Changes and their forms: signed in (else to /login), an admin (else 403), with the
    CSRF token for a change; a form's page counts as a read."""
    await _signed_in(request)
    principal = await _admin_write(request)
    async with _page_read(request, principal):
        yield principal


Viewer = Annotated[Principal, Depends(viewer)]
ViewerWrite = Annotated[Principal, Depends(viewer_write)]
Admin = Annotated[Principal, Depends(admin)]
