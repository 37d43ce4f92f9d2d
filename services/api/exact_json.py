"""JSON request bodies whose numbers keep the digits they were sent with.

``json.loads`` reads ``100.000000000000001`` as the binary float ``100.0``: a policy's
``limit_amount`` or a check's ``estimated_cost`` sent as a JSON number would be set to
another amount than the one written, silently. Here each such number is an
``ExactNumber``: a float to everything that counts with floats (token counts, seconds),
whose text is the number as written, which is what a ``Decimal`` field reads.
"""

from __future__ import annotations

import json
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
    """``json.loads``, with each number that has a fraction or exponent an ``ExactNumber``."""
    return json.loads(body, parse_float=ExactNumber)


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
