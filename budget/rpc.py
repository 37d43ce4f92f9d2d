"""Request/reply over NATS to the services (enforcer, query service): one way to ask and
to tell "nobody answered" from "the service refused the question"."""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from pydantic import BaseModel, ValidationError

from budget.natsconn import permitted
from events.rpc import RpcError

__all__ = ["Refused", "RpcFailure", "Unanswered", "ask"]

M = TypeVar("M", bound=BaseModel)
_RETRY = 0.1  # seconds between asking a service that has no subscriber yet


class RpcFailure(Exception):
    """The question got no usable answer."""


class Unanswered(RpcFailure, ConnectionError):
    """No service answered (not connected, no responders, or timed out)."""


class Refused(RpcFailure, ValueError):
    """The service answered with an ``RpcError``: the question was wrong or it failed."""


async def ask(
    nc: Client | None,
    subject: str,
    request: BaseModel,
    answer: type[M],
    *,
    within: float,
    await_responder: bool = False,
) -> M:
    """Send ``request`` to ``subject`` and parse the reply as ``answer``. With
    ``await_responder``, a service that is not subscribed yet (starting, restarting) is
    asked again until ``within`` runs out; otherwise that fails at once."""
    if nc is None or not nc.is_connected:
        raise Unanswered("not connected to NATS")
    data = request.model_dump_json().encode()
    deadline = time.monotonic() + within
    while True:
        try:
            timeout = max(deadline - time.monotonic(), 0.01)
            reply = await permitted(nc, subject, nc.request(subject, data, timeout=timeout))
            break
        except NoRespondersError as exc:
            if not await_responder or time.monotonic() + _RETRY > deadline:
                raise Unanswered(f"no answer on {subject}: {exc!r}") from None
            await asyncio.sleep(_RETRY)
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
