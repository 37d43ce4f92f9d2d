"""Request/reply over NATS to the services (enforcer, query service): one way to ask and
to tell "nobody answered" from "the service refused the question" and from "the service
asks this caller to slow down" (``Throttled``, after waiting its ``retry_after`` while the
time to ask allows)."""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from pydantic import BaseModel, ValidationError

from budget.natsconn import permitted
from events.rpc import MAX_REFUSAL_HOLD, TIME_LEFT, RpcError

__all__ = [
    "Refused",
    "RetryTimes",
    "RpcFailure",
    "ServiceUnavailable",
    "Throttled",
    "Unanswered",
    "ask",
]

M = TypeVar("M", bound=BaseModel)
_RETRY = 0.1  # seconds between asking a service that has no subscriber yet


class RpcFailure(Exception):
    """The question got no usable answer."""


class Unanswered(RpcFailure, ConnectionError):
    """No service answered (not connected, no responders, or timed out)."""


class _NobodyAnswers(Unanswered):
    """No service is subscribed (an outage for sure: a held refusal needs a service)."""


class ServiceUnavailable(Unanswered):
    """The service answered that it can answer no question now (``RpcError.unavailable``:
    its database unreachable, a loop not healthy): an outage, as if nobody had answered."""


class Refused(RpcFailure, ValueError):
    """The service answered with an ``RpcError`` about this question: it was wrong, or
    answering it failed (an outage of the service is ``ServiceUnavailable``)."""


class Throttled(RpcFailure):
    """The service refused this caller for its rate or in-flight limit, for longer than
    the time to ask allowed waiting; ``retry_after``: seconds until it may ask again."""

    def __init__(self, why: str, retry_after: float) -> None:
        super().__init__(why)
        self.retry_after = retry_after


class RetryTimes:
    """When each service last told this client to ask again, per service and caller (the
    services limit a caller across all its questions to them): every question of the
    client to that service honours one refusal, not only the question it answered. (A
    service holds the refusals of a caller that asks again sooner: ``services.limits``.)"""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._refused_at: dict[str, float] = {}

    def told(self, subject: str, retry_after: float) -> None:
        key, now = _service_of(subject), time.monotonic()
        self._refused_at[key] = now
        if now + retry_after > self._until.get(key, 0.0):
            self._until[key] = now + retry_after

    def wait(self, subject: str) -> float:
        """Seconds until the service of ``subject`` may be asked again (0: now)."""
        key = _service_of(subject)
        until = self._until.get(key)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._until[key]
            return 0.0
        return left

    def refused_since(self, subject: str, since: float) -> bool:
        """Whether the service of ``subject`` refused this client at ``since`` (a
        ``time.monotonic()``) or later."""
        return self._refused_at.get(_service_of(subject), -1.0) >= since


def _service_of(subject: str) -> str:
    """``<prefix>.rpc.<caller>.<service>`` of a request subject ``....<service>.<name>``."""
    return subject.rsplit(".", 1)[0]


async def ask(
    nc: Client | None,
    subject: str,
    request: BaseModel,
    answer: type[M],
    *,
    within: float,
    await_responder: bool = False,
    retry_times: RetryTimes | None = None,
) -> M:
    """Send ``request`` to ``subject`` and parse the reply as ``answer``. With
    ``await_responder``, a service that is not subscribed yet (starting, restarting) is
    asked again until ``within`` runs out; otherwise that fails at once. A refusal for
    the caller's limits is asked again after its ``retry_after`` if that falls within
    ``within``, else raised as ``Throttled``; with ``retry_times``, so is a question
    asked while an earlier refusal's time has not come, before it is sent."""
    if nc is None or not nc.is_connected:
        raise Unanswered("not connected to NATS")
    data = request.model_dump_json().encode()
    deadline = time.monotonic() + within
    while True:
        if retry_times is not None and (wait := retry_times.wait(subject)) > 0:
            if time.monotonic() + wait >= deadline:
                raise Throttled(f"{subject}: this caller was told to retry after {wait:.3f}s", wait)
            await asyncio.sleep(wait)
            continue
        sent = time.monotonic()
        try:
            reply = await _request(nc, subject, data, deadline, await_responder=await_responder)
        except _NobodyAnswers:
            raise
        except Unanswered:
            # The service holds the refusals of a caller that asked again before its time
            # (up to MAX_REFUSAL_HOLD s): no answer then is a refusal, never an outage
            # (``fail_open``).
            if retry_times is not None and retry_times.refused_since(
                subject, sent - MAX_REFUSAL_HOLD
            ):
                raise Throttled(
                    f"{subject}: no answer in time after this caller was refused (the service"
                    " holds the refusals of a caller that asks again before its time)",
                    MAX_REFUSAL_HOLD,
                ) from None
            raise
        try:
            return answer.model_validate_json(reply)
        except ValidationError:
            pass
        try:
            error = RpcError.model_validate_json(reply)
        except ValidationError:
            raise Refused(f"unexpected answer {reply[:200]!r}") from None
        if error.unavailable:
            raise ServiceUnavailable(error.error)
        if error.retry_after is None:
            raise Refused(error.error)
        if retry_times is not None:
            retry_times.told(subject, error.retry_after)
        if time.monotonic() + error.retry_after >= deadline:
            raise Throttled(error.error, error.retry_after)
        await asyncio.sleep(error.retry_after)


async def _request(
    nc: Client, subject: str, data: bytes, deadline: float, *, await_responder: bool
) -> bytes:
    while True:
        try:
            timeout = max(deadline - time.monotonic(), 0.01)
            # How long this asker waits: a service holding a refusal sends it before then.
            headers = {TIME_LEFT: f"{timeout:.3f}"}
            request = nc.request(subject, data, timeout=timeout, headers=headers)
            reply = await permitted(nc, subject, request)
            return reply.data
        except NoRespondersError as exc:
            if not await_responder or time.monotonic() + _RETRY > deadline:
                raise _NobodyAnswers(f"no answer on {subject}: {exc!r}") from None
            await asyncio.sleep(_RETRY)
        except (NatsError, TimeoutError) as exc:
            raise Unanswered(f"no answer on {subject}: {exc!r}") from None
