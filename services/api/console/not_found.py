"""A browser that asks for a page the console does not have (a mistyped address, an old
bookmark) gets a console page saying so, with the navigation and the way back, instead of
the API's problem JSON. The API's own paths, the static files and the probes keep the
problem JSON, as does any client that does not ask for HTML."""

from __future__ import annotations

import inspect

from fastapi import FastAPI, Request, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.api.auth import READ, authenticate
from services.api.console.guard import PAGE_HEADERS, error_page
from services.api.problems import OUTAGES

__all__ = ["install_page_not_found"]

NOT_PAGES = ("/api/", "/static/", "/healthz", "/readyz")


def install_page_not_found(app: FastAPI) -> None:
    """After ``install_problem_handlers``: its answer stays for every other request."""
    problem_answer = app.exception_handlers[StarletteHTTPException]

    async def answer(request: Request, exc: Exception) -> Response:
        if (
            isinstance(exc, StarletteHTTPException)
            and exc.status_code == 404
            and _wants_page(request)
        ):
            return await _not_found_page(request)
        answered = problem_answer(request, exc)
        return await answered if inspect.isawaitable(answered) else answered

    app.add_exception_handler(StarletteHTTPException, answer)


def _wants_page(request: Request) -> bool:
    return (
        request.method in ("GET", "HEAD")
        and not request.url.path.startswith(NOT_PAGES)
        and "text/html" in request.headers.get("accept", "")
    )


async def _not_found_page(request: Request) -> Response:
    try:  # signed in: the page keeps the navigation; else it offers to sign in
        principal = await authenticate(request)
    except OUTAGES:
        principal = None
    if principal is not None and principal.role in READ:
        request.state.principal = principal
    detail = f"There is no page at {request.url.path}: pick one from the menu."
    response = error_page(request, 404, "Page not found", detail)
    response.headers.update(PAGE_HEADERS)
    return response
