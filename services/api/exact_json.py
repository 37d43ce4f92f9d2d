"""JSON request bodies whose numbers keep the digits they were sent with.

``json.loads`` reads ``100.000000000000001`` as the binary float ``100.0``: a policy's
``limit_amount`` or a check's ``estimated_cost`` sent as a JSON number would be set to
another amount than the one written, silently. Here each such number is an
``ExactNumber``: a float to everything that counts with floats (token counts, seconds),
whose text is the number as written, which is what a ``Decimal`` field reads. A key
given twice in one object is refused, not read as its last value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

__all__ = ["ExactJsonRoute", "ExactNumber", "loads"]


class ExactNumber(float):
    """A JSON number with a fraction or an exponent: a float, written as it was sent
    (``str`` and ``repr``), so ``Decimal(str(n))`` is the amount meant."""

    text: str

    def __new__(cls, text: str) -> ExactNumber:
        number = super().__new__(cls, text)
        number.text = text
        return number

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


def loads(body: bytes | str) -> Any:
    """``json.loads``, with each number that has a fraction or exponent an ``ExactNumber``;
    a ``json.JSONDecodeError`` for an object that names a key twice, which ``json.loads``
    would answer with the last value ("limit_amount": "1", "limit_amount": "100")."""
    try:
        return json.loads(body, parse_float=ExactNumber, object_pairs_hook=_each_key_once)
    except _KeyTwice as twice:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        named = [m.start() for m in re.finditer(re.escape(json.dumps(twice.key)), text)]
        at = named[1] if len(named) > 1 else 0
        reason = f"{twice.key!r} is given twice; send each field once"
        raise json.JSONDecodeError(reason, text, at) from None


class _KeyTwice(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _each_key_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _KeyTwice(key)
        document[key] = value
    return document


class _ExactJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class ExactJsonRoute(APIRoute):
    """A route whose JSON body is read by ``loads``: its Decimal fields get what was sent."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_ExactJsonRequest(request.scope, request.receive))

        return route
