"""Request/reply over NATS to the services (enforcer, query service): one way to ask and
to tell "nobody answered" from "the service refused the question" and from "the service
asks this caller to slow down" (``Throttled``, after waiting its ``retry_after`` while the
time to ask allows)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from nats.aio.client import NO_RESPONDERS_STATUS, Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js.api import Header
from nats.nuid import NUID
from pydantic import BaseModel, ValidationError

from budget.natsconn import permitted
from events.rpc import MAX_REFUSAL_HOLD, TIME_LEFT, RpcError

__all__ = [
    "LateAnswers",
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


class LateAnswers:
    """An inbox of one's own for questions whose answer matters even after the asker
    stopped waiting for it: an answer that arrives later (sent in time by the service, but
    slower on its way than the asker's patience) is handed to the question's ``on_late``,
    where nats-py's own requests drop it. A check's answer may hold a reservation that nobody would
    otherwise release, counting against its limit until it expired.

    One subscription (``<inbox>.*``) per connection; a question unanswered in its time is
    remembered for ``REMEMBERED`` seconds (at most ``_KEPT`` of them)."""

    REMEMBERED = 60.0
    _KEPT = 10_000

    def __init__(self) -> None:
        self._nuid = NUID()
        self._sub: Subscription | None = None
        self._nc: Client | None = None
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._given_up: OrderedDict[str, tuple[float, Callable[[bytes], object]]] = OrderedDict()
        """Tokens of the questions whose asker stopped waiting: when, and their ``on_late``."""

    async def request(
        self,
        nc: Client,
        subject: str,
        data: bytes,
        *,
        waits: float,
        headers: dict[str, str],
        on_late: Callable[[bytes], object],
    ) -> Msg:
        """``nc.request(subject, data, timeout=waits, headers=headers)``, whose answer
        arriving too late goes to ``on_late``."""
        inbox = await self._inbox(nc)
        token = self._nuid.next().decode()
        answered: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[token] = answered
        try:
            await nc.publish(subject, data, reply=f"{inbox}.{token}", headers=headers)
            msg = await asyncio.wait_for(answered, waits)
        except BaseException:
            self._gave_up(token, on_late)
            raise
        finally:
            del self._waiting[token]
        if _no_responders(msg):
            raise NoRespondersError
        return msg

    async def _inbox(self, nc: Client) -> str:
        if self._nc is not nc or self._sub is None:
            self._nc, self._given_up = nc, OrderedDict()
            self._sub = await nc.subscribe(f"{nc.new_inbox()}.*", cb=self._on_answer)
        return self._sub.subject[:-2]

    def _gave_up(self, token: str, on_late: Callable[[bytes], object]) -> None:
        now = time.monotonic()
        while self._given_up and (
            len(self._given_up) >= self._KEPT
            or next(iter(self._given_up.values()))[0] < now - self.REMEMBERED
        ):
            self._given_up.popitem(last=False)
        self._given_up[token] = (now, on_late)

    async def _on_answer(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[1]
        waiting = self._waiting.get(token)
        if waiting is not None:
            if not waiting.done():
                waiting.set_result(msg)
            return
        given_up = self._given_up.pop(token, None)
        if given_up is not None and not _no_responders(msg):
            given_up[1](msg.data)


def _no_responders(msg: Msg) -> bool:
    return (msg.headers or {}).get(Header.STATUS) == NO_RESPONDERS_STATUS


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
    late_answers: LateAnswers | None = None,
    on_late: Callable[[bytes], object] | None = None,
) -> M:
    """Send ``request`` to ``subject`` and parse the reply as ``answer``. With
    ``await_responder``, a service that is not subscribed yet (starting, restarting) is
    asked again until ``within`` runs out; otherwise that fails at once. A refusal for
    the caller's limits is asked again after its ``retry_after`` if that falls within
    ``within``, else raised as ``Throttled``; with ``retry_times``, so is a question
    asked while an earlier refusal's time has not come, before it is sent. With
    ``late_answers``, an answer arriving after ``within`` is given to ``on_late``."""
    if nc is None or not nc.is_connected:
        raise Unanswered("not connected to NATS")
    # Fields at their defaults stay out: a service of an earlier release, which refuses
    # fields it does not know, still answers a question that uses none of the new ones.
    data = request.model_dump_json(exclude_defaults=True).encode()
    deadline = time.monotonic() + within
    while True:
        if retry_times is not None and (wait := retry_times.wait(subject)) > 0:
            if time.monotonic() + wait >= deadline:
                raise Throttled(f"{subject}: this caller was told to retry after {wait:.3f}s", wait)
            await asyncio.sleep(wait)
            continue
        sent = time.monotonic()
        try:
            reply = await _request(
                nc,
                subject,
                data,
                deadline,
                await_responder=await_responder,
                late=None if late_answers is None or on_late is None else (late_answers, on_late),
            )
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
    nc: Client,
    subject: str,
    data: bytes,
    deadline: float,
    *,
    await_responder: bool,
    late: tuple[LateAnswers, Callable[[bytes], object]] | None,
) -> bytes:
    while True:
        try:
            timeout = max(deadline - time.monotonic(), 0.01)
            # How long this asker waits: a service holding a refusal sends it before then.
            headers = {TIME_LEFT: f"{timeout:.3f}"}
            if late is None:
                request = nc.request(subject, data, timeout=timeout, headers=headers)
            else:
                inbox, on_late = late
                request = inbox.request(
                    nc, subject, data, waits=timeout, headers=headers, on_late=on_late
                )
            reply = await permitted(nc, subject, request)
            return reply.data
        except NoRespondersError as exc:
            if not await_responder or time.monotonic() + _RETRY > deadline:
                raise _NobodyAnswers(f"no answer on {subject}: {exc!r}") from None
            await asyncio.sleep(_RETRY)
        except (NatsError, TimeoutError) as exc:
            raise Unanswered(f"no answer on {subject}: {exc!r}") from None
