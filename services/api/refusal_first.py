"""An API request its route would refuse (no live credential: 401; a key of another role:
403) is refused so whatever its body. FastAPI reads a JSON body before it runs the route's
dependencies, so a body that was no JSON at all was answered 422, to anyone, before the
credential was looked at: the 401 and 403 of every route hold for every body.

A body FastAPI's parser gives up on other than as bad JSON syntax (nested past the
parser's depth, bytes that are no UTF-8) is its 400 "There was an error parsing the body",
which names nothing: it is answered as bad JSON is, a 422 on ``body`` saying why."""

from __future__ import annotations

import inspect

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.api.auth import authenticate, refusal, route_roles
from services.api.problems import OUTAGES, outage_problem, problem_response

__all__ = ["install_refusal_first"]

API_PATHS = "/api/"
"""The console's pages refuse by sending a browser to sign in, never on a body."""
_UNREADABLE = {
    RecursionError: "nested deeper than the parser goes",
    UnicodeDecodeError: "not UTF-8 text",
}


def install_refusal_first(app: FastAPI) -> None:
    """After ``install_problem_handlers``: its answers stay for a request the route admits."""
    invalid_answer = app.exception_handlers[RequestValidationError]
    http_answer = app.exception_handlers[StarletteHTTPException]

    async def invalid(request: Request, exc: Exception) -> Response:
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

    async def http(request: Request, exc: Exception) -> Response:
        reason = _UNREADABLE.get(type(exc.__cause__)) if _parsing(exc) else None
        if reason is not None:
            return await invalid(request, _bad_json(reason))
        answered = http_answer(request, exc)
        return await answered if inspect.isawaitable(answered) else answered

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http)


def _parsing(exc: Exception) -> bool:
    """FastAPI's refusal of a body it could not parse (``fastapi.routing``)."""
    return isinstance(exc, StarletteHTTPException) and exc.status_code == 400


def _bad_json(reason: str) -> RequestValidationError:
    """As FastAPI says a body's JSON is wrong (``problems.field_errors`` words it)."""
    error = {"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error"}
    return RequestValidationError([{**error, "ctx": {"error": reason}}])
