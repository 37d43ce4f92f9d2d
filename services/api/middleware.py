"""The HTTP service's ASGI middleware: access log (and request metrics), catch-all, body
limit, NUL guard.

Each wraps HTTP requests only and passes anything else (lifespan) straight through.
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from events.nul import JSON_NUL
from services.api.problems import Problem, problem_response
from services.metrics import HTTP_REQUEST_SECONDS

__all__ = [
    "AccessLog",
    "BodyLimit",
    "CatchAll",
    "NoNulCharacters",
    "read_body",
    "replay",
]

log = logging.getLogger("budget.api")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _HttpMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class AccessLog(_HttpMiddleware):
    """One line per request: method, path, status, milliseconds. The path only: no query
    string, header or cookie reaches the log. Its time goes to ``HTTP_REQUEST_SECONDS``
    under the name of the route that answered (its function, e.g. ``get_policy``), never
    the path, so what a client sends cannot add series."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            elapsed = time.perf_counter() - started
            method = scope["method"] if scope["method"] in _METHODS else "other"
            handler = getattr(scope.get("route"), "name", None) or "unmatched"
            HTTP_REQUEST_SECONDS.labels(method, handler, str(status)).observe(elapsed)
            log.info(
                "%s %s %d %.1fms",
                scope["method"],
                _printable(scope["path"]),
                status,
                elapsed * 1000,
            )


class CatchAll(_HttpMiddleware):
    """An unexpected failure is logged (path and traceback, for operators) and answered
    with a 500 problem that carries no traceback. Caught here rather than by Starlette's
    outermost handler, which re-raises and so makes the server drop the connection."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            log.error("%s %s failed", scope["method"], _printable(scope["path"]), exc_info=exc)
            if started:  # too late for a problem document: end the response
                raise
            detail = "the request failed unexpectedly; it was logged on the server"
            await problem_response(Problem(500, detail), scope["path"])(scope, receive, send)


class BodyLimit(_HttpMiddleware):
    """Refuse bodies over ``limit`` bytes with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        super().__init__(app)
        self.limit = limit

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(scope, receive, send)
                return
        received = 0

        async def counted() -> Message:
            # Raised as HTTPException so FastAPI's body reader passes it on unchanged.
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise StarletteHTTPException(413, self._detail())
            return message

        await self.app(scope, counted, send)

    def _detail(self) -> str:
        return f"the request body is larger than {self.limit} bytes"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await problem_response(Problem(413, self._detail()), scope["path"])(scope, receive, send)


class NoNulCharacters(_HttpMiddleware):
    """Refuse a NUL character in the path, the query string or a body (``%00``, or
    ``\\u0000`` in JSON) with 422: PostgreSQL text cannot hold one, so it could only fail
    later, inside a query or, worse, in every projection after the event was accepted.
    A body is read whole (``BodyLimit`` bounds it) and scanned once, so no split across
    chunks can hide an escape."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if "\x00" in scope["path"]:
            await _refuse_nul("path", scope, receive, send)
            return
        for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
            if "\x00" in name or "\x00" in value:
                field = f"query.{name.strip(chr(0)) or 'string'}"
                await _refuse_nul(field, scope, receive, send)
                return
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        try:
            body, more = await read_body(receive)
        except StarletteHTTPException as exc:  # BodyLimit's, raised while reading
            await problem_response(Problem(exc.status_code, str(exc.detail)), scope["path"])(
                scope, receive, send
            )
            return
        form = (dict(scope.get("headers", ())).get(b"content-type") or b"").startswith(
            b"application/x-www-form-urlencoded"
        )
        if (_FORM_NUL if form else JSON_NUL).search(body):
            await _refuse_nul("body", scope, receive, send)
            return
        await self.app(scope, replay(body, more, receive), send)


async def read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    """The whole body, and anything received after it (a disconnect)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), [message]
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), []


def replay(body: bytes, after: list[Message], receive: Receive) -> Receive:
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}, *after]

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _refuse_nul(field: str, scope: Scope, receive: Receive, send: Send) -> None:
    detail = _NUL_DETAIL.format(field=field)
    problem = Problem(422, detail, errors=[{"field": field, "message": "contains NUL"}])
    await problem_response(problem, scope["path"])(scope, receive, send)


_NUL_DETAIL = "{field}: NUL characters (U+0000) are not accepted; remove them"
# As JSON_NUL, or in a form body %00.
_FORM_NUL = re.compile(rb"\x00|%00|(?<!\\)(?:\\\\)*\\u0000", re.IGNORECASE)


def _printable(path: str) -> str:
    """A path fit for one log line: a newline in it cannot forge another line."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in path)
