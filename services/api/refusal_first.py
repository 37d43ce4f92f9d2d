"""An API request its route would refuse (no live credential: 401; a key of another role:
403) is refused so whatever its body. FastAPI reads a JSON body before it runs the route's
dependencies, so a body that was no JSON at all was answered 422, to anyone, before the
credential was looked at: the 401 and 403 of every route hold for every body."""

from __future__ import annotations

import inspect

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError

from services.api.auth import authenticate, refusal, route_roles
from services.api.problems import OUTAGES, outage_problem, problem_response

__all__ = ["install_refusal_first"]

API_PATHS = "/api/"
"""The console's pages refuse by sending a browser to sign in, never on a body."""


def install_refusal_first(app: FastAPI) -> None:
    """After ``install_problem_handlers``: its answer stays for a request the route admits."""
    invalid_answer = app.exception_handlers[RequestValidationError]

    async def answer(request: Request, exc: Exception) -> Response:
        roles = route_roles(request.scope.get("route"))
        if roles is not None and request.url.path.startswith(API_PATHS):
            try:
                refused = refusal(await authenticate(request), roles)
            except OUTAGES as outage:
                return problem_response(outage_problem(outage), request.url.path)
            if refused is not None:
                return problem_response(refused, request.url.path)
        answered = invalid_answer(request, exc)
        return await answered if inspect.isawaitable(answered) else answered

    app.add_exception_handler(RequestValidationError, answer)
