"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error the API returns has ``type``, ``title``, ``status`` and ``detail``; a
validation error also names each wrong field in ``errors`` (``field``: dotted path, e.g.
``body.limit_amount``); a refusal for too many requests (429) also says in ``retry_after``
how many seconds to wait, as its ``Retry-After`` header does (rounded up); a usage post
whose events the event log may have stored without saying so (503) also lists in
``event_ids`` the ids to retry them with. An unexpected
failure is answered with a 500 that carries no traceback and no request data
(``services.api.middleware.CatchAll``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from nats.errors import Error as NatsError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from budget.commands import ClockAhead, Contended
from budget.natsconn import PermissionDenied
from budget.queries import NotApplied
from budget.rpc import Unanswered
from events.permissions import API_USER
from projections.readable import Rebuilding
from services.api.allowed_methods import allowed_methods

__all__ = [
    "LIMITED_RESPONSES",
    "OUTAGES",
    "PROBLEM_RESPONSES",
    "Problem",
    "ProblemDocument",
    "field_errors",
    "install_problem_handlers",
    "outage_problem",
    "problem_response",
]

log = logging.getLogger("budget.api")

PROBLEM_JSON = "application/problem+json"
_TITLES = {
    400: "Bad request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
    504: "Gateway timeout",
}


class FieldError(BaseModel):
    field: str = Field(description="dotted location, e.g. body.limit_amount or query.since")
    message: str


class ProblemDocument(BaseModel):
    """RFC 9457 problem details, as every error is answered."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] = Field(default_factory=list, description="what is wrong where")
    retry_after: float | None = Field(
        default=None, description="429: seconds to wait before asking again"
    )
    event_ids: list[str] | None = Field(
        default=None,
        description="503 from a usage post: the event_id of each of its events, in order;"
        " the event log may have stored them, so retry with these ids (each is counted once)",
    )


def _documented(description: str) -> dict[str, Any]:
    schema = ProblemDocument.model_json_schema()
    return {"description": description, "content": {PROBLEM_JSON: {"schema": schema}}}


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _documented("no live API key or session"),
    403: _documented("the key's role may not do this (or a stale CSRF token)"),
    413: _documented("the body is over the size limit"),
    422: _documented("a field is wrong: `errors` names each one"),
}
"""The error answers every route can give, for the OpenAPI document."""

LIMITED_RESPONSES: dict[int | str, dict[str, Any]] = {
    429: _documented(
        "this API key is over its request limit (docs/api.md#limits-per-key): wait"
        " `retry_after` seconds (also the `Retry-After` header)"
    ),
}
"""The answer of a route limited per API key (``services.api.limits``)."""


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        errors: Sequence[dict[str, str]] = (),
        headers: dict[str, str] | None = None,
        retry_after: float | None = None,
        event_ids: Sequence[str] | None = None,
    ) -> None:
        """``retry_after``: seconds, answered in the body and (rounded up) as ``Retry-After``;
        ``event_ids``: those a usage post's retry must carry (``ProblemDocument``)."""
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or _TITLES.get(status, "Error")
        self.errors = list(errors)
        self.headers = headers or {}
        self.retry_after = retry_after
        self.event_ids = None if event_ids is None else list(event_ids)
        if retry_after is not None:
            self.headers["Retry-After"] = str(math.ceil(retry_after))


def problem_response(problem: Problem, instance: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
    }
    if instance:
        body["instance"] = instance
    if problem.errors:
        body["errors"] = problem.errors
    if problem.retry_after is not None:
        body["retry_after"] = round(problem.retry_after, 3)
    if problem.event_ids is not None:
        body["event_ids"] = problem.event_ids
    return JSONResponse(body, problem.status, headers=problem.headers, media_type=PROBLEM_JSON)


ID_CHARACTERS = {
    r"^[A-Za-z0-9_.:-]+$": "letters, digits and _ . : - only (no spaces or other signs)",
    r"^[A-Za-z0-9_-]+$": "letters, digits, _ and - only (no spaces or other signs)",
}
"""The ids' patterns (policies', rules', keys') as a reader can act on them: pydantic names
the regular expression."""
NOT_A_NUMBER = (
    "Input should be a number such as 12.50: digits and a decimal point, without a"
    " currency sign or thousands separators"
)
"""Pydantic's "Input should be a valid decimal" left "$10" and "1,000" a riddle."""
NO_OFFSET = "Input should be a time with its UTC offset: add Z or +HH:MM, e.g. 2026-03-01T00:00:00Z"
"""Pydantic's "Input should have timezone info" did not say how to give one."""
WHOLE_BODY = {
    "missing": "the request needs a JSON object as its body (Content-Type: application/json)",
    "model_attributes_type": "the body should be a JSON object, sent with"
    " Content-Type: application/json",
}
"""What is wrong with the body as a whole, by pydantic's error: sent without the JSON
content type, a body is not parsed, and pydantic said it "should be a valid dictionary or
object to extract fields from"."""


def field_errors(errors: Sequence[Any]) -> list[dict[str, str]]:
    """Pydantic's errors as ``{"field": "body.limit_amount", "message": "..."}``."""
    result = []
    for err in errors:
        loc = [str(part) for part in err.get("loc", ())]
        message = WHOLE_BODY.get(err.get("type"), "") if loc == ["body"] else ""
        message = message or _message(err)
        if err.get("type") == "json_invalid":
            # FastAPI locates it as ("body", <character offset>): that is no field, and
            # "JSON decode error" alone does not say what to fix; its parser's reason does.
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            reason = (err.get("ctx") or {}).get("error", "")
            result.append({"field": "body", "message": f"not valid JSON{at}: {reason}"})
            continue
        result.append({"field": ".".join(loc) or "body", "message": message})
    return result


def _message(err: Any) -> str:
    kind = err.get("type")
    if kind == "decimal_parsing":
        return NOT_A_NUMBER
    if kind == "timezone_aware":
        return NO_OFFSET
    if kind == "string_pattern_mismatch":
        allowed = ID_CHARACTERS.get((err.get("ctx") or {}).get("pattern", ""))
        if allowed is not None:
            return f"Input should be {allowed}"
    return str(err.get("msg", "invalid")).removeprefix("Value error, ")


OUTAGES = (
    psycopg.OperationalError,
    NotApplied,
    ConnectionError,
    NatsError,
    Contended,
    ClockAhead,
    PermissionDenied,
    Rebuilding,
)
"""What a server being away, too busy or refusing this process's credential raises, or a
read model being rebuilt after an upgrade: each is a 503 (504 for a change not applied in
time)."""

REBUILDING_RETRY = 30.0
"""Seconds a reader of a projection being rebuilt is told to wait before asking again."""


def outage_problem(exc: Exception) -> Problem:
    if isinstance(exc, psycopg.OperationalError):
        log.warning("PostgreSQL unreachable: %s", type(exc).__name__)
        return Problem(503, "the database is unreachable; retry shortly")
    if isinstance(exc, NotApplied):
        return Problem(504, str(exc))
    if isinstance(exc, Rebuilding):
        return Problem(503, str(exc), retry_after=REBUILDING_RETRY)
    if isinstance(exc, (Unanswered, Contended, ClockAhead)):  # says what to do; no URL
        return Problem(503, str(exc))
    if isinstance(exc, PermissionDenied):  # the operator's to fix: the subject is logged
        log.error("NATS refused the API: %s", exc)
        return Problem(
            503,
            "this API's NATS credential may not do this: run `budget api` as its own NATS"
            f" user, `{API_USER}` (docs/security.md); its log names what was refused",
        )
    # NATS away or failing while a change is published: a fixed text, so no URL (and no
    # password in one) reaches the answer.
    log.warning("NATS failed: %s", type(exc).__name__)
    return Problem(503, "the event log (NATS) is unreachable; nothing changed, retry shortly")


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(exc.errors())
        first = errors[0] if errors else {"field": "body", "message": "invalid"}
        detail = f"{first['field']}: {first['message']}"
        return problem_response(Problem(422, detail, errors=errors), request.url.path)

    async def _outage(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(outage_problem(exc), request.url.path)

    for kind in OUTAGES:
        app.add_exception_handler(kind, _outage)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "")
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and (allowed := allowed_methods(request.app, request.url.path)):
            headers["Allow"] = ", ".join(allowed)
            choices = ", ".join(allowed[:-1]) + " or " if len(allowed) > 1 else ""
            detail = f"{request.method} is not a method of this path; use {choices}{allowed[-1]}"
        problem = Problem(exc.status_code, detail, headers=headers)
        return problem_response(problem, request.url.path)
