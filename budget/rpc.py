"""Request/reply over NATS to the services (enforcer, query service): one way to ask and
to tell "nobody answered" from "the service refused the question"."""

from __future__ import annotations

from typing import TypeVar

from nats.aio.client import Client
from nats.errors import Error as NatsError
from pydantic import BaseModel, ValidationError

from events.rpc import RpcError

__all__ = ["Refused", "RpcFailure", "Unanswered", "ask"]

M = TypeVar("M", bound=BaseModel)


class RpcFailure(Exception):
    """The question got no usable answer."""


class Unanswered(RpcFailure, ConnectionError):
    """No service answered (not connected, no responders, or timed out)."""


class Refused(RpcFailure, ValueError):
    """The service answered with an ``RpcError``: the question was wrong or it failed."""


async def ask(
    nc: Client | None, subject: str, request: BaseModel, answer: type[M], *, within: float
) -> M:
    """Send ``request`` to ``subject`` and parse the reply as ``answer``."""
    if nc is None or not nc.is_connected:
        raise Unanswered("not connected to NATS")
    try:
        reply = await nc.request(subject, request.model_dump_json().encode(), timeout=within)
    except (NatsError, TimeoutError) as exc:
        raise Unanswered(f"no answer on {subject}: {exc!r}") from None
    try:
        return answer.model_validate_json(reply.data)
    except ValidationError:
        pass
    try:
        why = RpcError.model_validate_json(reply.data).error
    except ValidationError:
        why = f"unexpected answer {reply.data[:200]!r}"
    raise Refused(why)
