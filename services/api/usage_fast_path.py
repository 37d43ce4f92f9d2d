"""``POST /api/v1/usage`` from a key, answered before the framework's layers.

A host app without NATS posts one event after every call, so this route's cost per request
bounds how many calls the API can record. Through FastAPI's routing, dependency solving
and Starlette's exception and session middlewares a post cost the API ~580 µs of CPU, of
which the route's own work (price, build, publish) was under a tenth
(docs/performance.md). This ASGI middleware answers the usual post itself with the
route's own functions: the same key check and limits (``auth``, ``limits``), validation
(``UsageIn``), work and answer (``routes.ingest.record_call``), problems (``problems``).
It takes only a request with a key in a header, no cookie and no query string, and a
JSON body (``application/json``) of a known length within the limit, without NUL
characters, that ``UsageIn`` accepts; it hands anything else to the app unchanged (the
body replayed), which answers it as it answers every route. The route stays the app's
too, so the OpenAPI document, the access log and the request metrics (under the route's
name) do not change.
"""

from __future__ import annotations

from starlette.datastructures import Headers, State
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from events.nul import JSON_NUL
from services.api import exact_json
from services.api.auth import INGEST, key_principal, presented_key, refusal
from services.api.context import ApiServices
from services.api.limits import holding
from services.api.middleware import read_body, replay
from services.api.problems import OUTAGES, Problem, outage_problem, problem_response
from services.api.routes.ingest import UsageIn, record_call

__all__ = ["PATH", "UsageFastPath"]

PATH = "/api/v1/usage"


class UsageFastPath:
    """``state``: the app's (its services and key limits); ``route``: the app's own route
    of this path, named in the request's metrics; ``limit``: the body limit in bytes."""

    def __init__(self, app: ASGIApp, *, state: State, route: BaseRoute, limit: int) -> None:
        self.app = app
        self.state = state
        self.route = route
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        key = presented_key(headers)
        length = headers.get("content-length", "")
        media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if (
            key is None
            or "cookie" in headers
            or scope.get("query_string")
            or media_type != "application/json"
            or not (length.isascii() and length.isdigit() and len(length) <= 19)
            or int(length) > self.limit
        ):
            await self.app(scope, receive, send)
            return
        body, after = await read_body(receive)
        call = None if after or JSON_NUL.search(body) else _usage(body)
        if call is None:
            await self.app(scope, replay(body, after, receive), send)
            return
        scope["route"] = self.route
        api: ApiServices = self.state.services
        try:
            principal = await key_principal(api, key)
            refused = refusal(principal, INGEST)
            if refused is not None:
                raise refused
            assert principal is not None
            with holding(self.state.key_limits.usage, principal):
                status, recorded = await record_call(api, principal, call)
                answer = Response(recorded.model_dump_json(), status, media_type="application/json")
                await answer(scope, receive, send)
        except Problem as problem:
            await problem_response(problem, PATH)(scope, receive, send)
        except OUTAGES as exc:
            await problem_response(outage_problem(exc), PATH)(scope, receive, send)


def _usage(body: bytes) -> UsageIn | None:
    """The post's call, as the route reads it (a JSON document, then the model), or None
    for the app to refuse, naming what is wrong."""
    try:
        return UsageIn.model_validate(exact_json.loads(body))
    except Exception:  # not JSON, nested past the parser's depth, or not a call
        return None
