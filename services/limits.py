"""Per-caller limits for the request/reply services: a token bucket (sustained rate and
burst) and a cap on requests in flight, for each caller a request subject names
(``<prefix>.rpc.<caller>.<name>``), so one greedy host cannot starve the others.

Requests wait for their turn in a queue per caller, served round robin, so a greedy
caller's backlog never sits in front of the others. A request over a limit is answered on
its turn with an ``RpcError`` carrying ``retry_after``, before its body is decoded: a
refusal costs a dictionary look-up and one small publish. A caller that asks again before
the time it was told is paced: its refusals are sent when that time comes (at most
``_MAX_HOLD`` later), each told a further ``retry_after``, so a client that never waits is
answered at about its rate rather than at the speed of the machine, which would otherwise
spend itself on refusals and starve the other callers of CPU.
The services' callers (``services_callers``: the admin tools speak for many users)
and the HTTP API's (``events.permissions.API_USER``: it asks for every key, and limits each
key itself) are never limited.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg

from budget.config import Settings
from budget.waits import wait_set
from events import Topology
from events.permissions import API_USER, SERVICE_USER
from events.rpc import MAX_REFUSAL_HOLD, TIME_LEFT, RpcError
from services.fair_queue import FairQueue
from services.liveness import Liveness
from services.replies import answerable, send

__all__ = ["CallerLimits", "LimitedRequests", "Refusal", "asker_waits", "services_callers"]

log = logging.getLogger(__name__)

_FORGET_AFTER = 10_000
"""Callers remembered before the idle ones (bucket full, nothing in flight) are forgotten."""
_MIN_RETRY = 0.001
_MAX_QUEUED = 1000
"""Requests of one caller waiting for their turn, past which more are refused on arrival;
also the refusals of one caller held for pacing, past which more go unanswered."""
_order = itertools.count()
"""Ties between held refusals due at the same time: the first held is sent first."""
_MAX_HOLD = MAX_REFUSAL_HOLD
"""Less when the asker says it waits less (``TIME_LEFT``): a refusal it never sees would
look like an outage to it."""
_MARGIN = 0.05
"""Seconds (and a fifth of its time) before the asker's time runs out that a held refusal
is sent."""
_MIN_HOLD = 0.1
"""Seconds a held refusal waits however little time its asker says it has: the tracker
takes no answer soon after a refusal for a refusal (``budget.rpc``)."""
_TURN_STALL_AFTER = 30.0
"""Seconds one request may take to be admitted and handed on, or refused, and one held
refusal to be sent: a loop that takes longer is stuck (``services.liveness``)."""


def services_callers(settings: Settings) -> frozenset[str]:
    """The callers that speak for the services: this process's own (``Settings.caller``)
    and the services' NATS user (the admin commands), which a service
    connected as a user of its own (the enforcer, ``events.permissions.OWN_USERS``) is not."""
    return frozenset((settings.caller, SERVICE_USER))


def _exempt(settings: Settings) -> frozenset[str]:
    return services_callers(settings) | {API_USER}


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    retry_after: float


@dataclass(slots=True)
class _Bucket:
    tokens: float
    refilled: float
    in_flight: int = 0
    told_until: float = 0.0
    """When the last refusal sent or held tells this caller to ask again."""


class CallerLimits:
    """``rate`` requests/s sustained and ``burst`` at once per caller, at most
    ``in_flight`` of a caller's requests being worked on; the ``exempt`` are never limited.
    ``settings``: the prefix of the settings' names, for refusals. ``clock``: for tests."""

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        in_flight: int,
        exempt: frozenset[str],
        settings: str = "caller",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        """The prefix of the settings that set these limits, named in refusals."""
        self.rate = rate
        self.burst = burst
        self.in_flight = in_flight
        self.exempt = exempt
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @classmethod
    def of_enforcer(cls, settings: Settings) -> CallerLimits:
        return cls(
            rate=settings.caller_rate,
            burst=settings.caller_burst,
            in_flight=settings.caller_in_flight,
            exempt=_exempt(settings),
        )

    @classmethod
    def of_query_service(cls, settings: Settings) -> CallerLimits:
        return cls(
            rate=settings.caller_query_rate,
            burst=settings.caller_query_burst,
            in_flight=settings.caller_query_in_flight,
            exempt=_exempt(settings),
            settings="caller_query",
        )

    def admit(self, caller: str) -> Refusal | None:
        """None: admitted, and counted in flight until ``done(caller)``; else why not."""
        if caller in self.exempt:
            return None
        now = self._clock()
        bucket = self._bucket(caller, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.refilled) * self.rate)
        bucket.refilled = now
        if bucket.in_flight >= self.in_flight:
            return Refusal(
                f"caller {caller!r} has {bucket.in_flight} requests in flight, the most"
                f" allowed ({self.settings}_in_flight)",
                max(1 / self.rate, _MIN_RETRY),
            )
        if bucket.tokens < 1 - 1e-9:  # not refused again for a rounding after its wait
            return Refusal(
                f"caller {caller!r} sends more than {self.rate:g} requests/s"
                f" ({self.settings}_rate)",
                max((1 - bucket.tokens) / self.rate, _MIN_RETRY),
            )
        bucket.tokens = max(bucket.tokens - 1, 0.0)
        bucket.in_flight += 1
        return None

    def done(self, caller: str) -> None:
        """One of ``caller``'s admitted requests was answered."""
        bucket = self._buckets.get(caller)
        if bucket is not None and bucket.in_flight > 0:
            bucket.in_flight -= 1

    def hold_for(self, caller: str, refusal: Refusal, *, most: float = _MAX_HOLD) -> float:
        """Seconds to hold ``refusal`` before sending it: none when ``caller`` asked after
        the time it was last told; else until that time, at most ``most`` (the asker's
        time left, when it says) and ``_MAX_HOLD``. The caller is then told to wait
        ``refusal.retry_after`` from when it is sent."""
        now = self._clock()
        bucket = self._bucket(caller, now)
        send_at = max(now, min(bucket.told_until, now + min(most, _MAX_HOLD)))
        bucket.told_until = send_at + refusal.retry_after
        return send_at - now

    def _bucket(self, caller: str, now: float) -> _Bucket:
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= _FORGET_AFTER:
                self._forget_idle(now)
            bucket = self._buckets[caller] = _Bucket(float(self.burst), now)
        return bucket

    def _forget_idle(self, now: float) -> None:
        idle = [
            caller
            for caller, b in self._buckets.items()
            if b.in_flight == 0
            and b.told_until <= now
            and b.tokens + (now - b.refilled) * self.rate >= self.burst
        ]
        for caller in idle:
            del self._buckets[caller]


class LimitedRequests:
    """One subscription's requests, queued per caller as they arrive (the subscription
    callback is ``on_message``) and handled round robin across callers: a request within
    its caller's limits goes to ``callback(msg, caller)``, any other is refused with
    ``retry_after``, its body unread. A greedy caller's backlog therefore never sits in
    front of another caller's request, which waits for at most one of its requests.

    A request counts in flight until ``callback`` returns, or, when it returns True (it
    handed the request on), until whoever answers calls ``limits.done(caller)``.
    ``on_refusal()`` is called for each request refused. Its two loops (serving the
    requests, sending the held refusals) are reported to ``liveness``, named after
    ``service`` and ``name`` (what the requests are), so that one that died or is stuck
    makes the service unhealthy rather than leave those requests unanswered unseen."""

    def __init__(
        self,
        nc: Client,
        limits: CallerLimits,
        topology: Topology,
        *,
        service: str,
        callback: Callable[[Msg, str], Awaitable[bool]],
        on_refusal: Callable[[], None] | None = None,
        liveness: Liveness | None = None,
        name: str = "requests",
    ) -> None:
        self.nc = nc
        self.limits = limits
        self.topology = topology
        self.service = service
        self.callback = callback
        self.on_refusal = on_refusal
        """Called for each request refused (a metric counts them)."""
        self._queue: FairQueue[tuple[Msg, float]] = FairQueue()
        """Each request with the loop time it arrived at."""
        self._warned: set[tuple[str, str]] = set()
        self._held: list[tuple[float, int, str, str, bytes]] = []
        """Refusals to send later, a heap of (loop time, order, caller, inbox, answer)."""
        self._held_by: dict[str, int] = {}
        self._more_held = asyncio.Event()
        loops = liveness or Liveness()  # unreported: a throwaway one
        self._serving = loops.loop(f"{service} {name} loop", stall_after=_TURN_STALL_AFTER)
        self._sending = loops.loop(f"{service} {name} refusals loop", stall_after=_TURN_STALL_AFTER)
        self._tasks = [
            self._serving.start(self._serve()),
            self._sending.start(self._send_held()),
        ]

    async def on_message(self, msg: Msg) -> None:
        caller = self.topology.caller_of(msg.subject)
        if not answerable(msg.reply):
            # none: not a request (e.g. a message reflected onto this subject), and it
            # would spend the limits of the caller its subject names
            self._warn_once(
                caller,
                "whose reply subject is not an inbox (_INBOX.): answering one would publish"
                " on another subject"
                if msg.reply
                else "that expect no answer",
            )
            return
        arrived = asyncio.get_running_loop().time()
        if self._queue.waiting(caller) < _MAX_QUEUED:
            self._queue.put(caller, (msg, arrived))
        else:  # a caller that sends without waiting for answers: refused here, unqueued
            refusal = Refusal(f"caller {caller!r} has too many requests queued", 1)
            await self._refuse(caller, msg, refusal, arrived)

    async def handled(self) -> None:
        """Wait until every request queued so far has been handled (handed on, answered or
        refused): once its subscription delivers no more (``Subscription.drain``), none
        taken is left unanswered by ``close``."""
        await self._queue.join()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _warn_once(self, caller: str, which: str) -> None:
        """Log that ``caller``'s requests ``which`` are dropped: once per caller and
        reason, since a caller could flood the log."""
        if (caller, which) not in self._warned and len(self._warned) < 1000:
            self._warned.add((caller, which))
            log.warning("%s: dropping requests of caller %r %s", self.service, caller, which)

    async def _serve(self) -> None:
        while True:
            [(caller, (msg, arrived))] = await self._queue.take(1)
            with self._serving.turn():
                try:
                    await self._handle(caller, msg, arrived)
                except Exception:  # e.g. NATS closed under a refusal: the next one is served
                    log.exception("%s could not handle a request", self.service)
                finally:
                    self._queue.task_done()

    async def _handle(self, caller: str, msg: Msg, arrived: float) -> None:
        refusal = self.limits.admit(caller)
        if refusal is not None:
            await self._refuse(caller, msg, refusal, arrived)
            return
        handed_on = False
        try:
            handed_on = await self.callback(msg, caller)
        finally:
            if not handed_on:
                self.limits.done(caller)

    async def _refuse(self, caller: str, msg: Msg, refusal: Refusal, arrived: float) -> None:
        if self.on_refusal is not None:
            self.on_refusal()
        if not answerable(msg.reply):
            return
        error = RpcError(
            error=f"{self.service}: too many requests: {refusal.reason}; retry after"
            f" {refusal.retry_after:.3f}s",
            retry_after=round(refusal.retry_after, 3),
        )
        waited = asyncio.get_running_loop().time() - arrived
        hold = self.limits.hold_for(caller, refusal, most=_time_left(msg) - waited)
        if hold <= 0:
            await send(self.nc, msg.reply, error)
            return
        held = self._held_by.get(caller, 0)
        if held >= _MAX_QUEUED:
            self._warn_once(caller, "refused while it has too many refusals held (it never waits)")
            return
        self._held_by[caller] = held + 1
        send_at = asyncio.get_running_loop().time() + hold
        order = next(_order)
        heapq.heappush(
            self._held, (send_at, order, caller, msg.reply, error.model_dump_json().encode())
        )
        self._more_held.set()

    async def _send_held(self) -> None:
        """Send each held refusal when its time comes."""
        loop = asyncio.get_running_loop()
        while True:
            self._more_held.clear()
            wait = self._held[0][0] - loop.time() if self._held else None
            if wait is None or wait > 0:
                await wait_set(self._more_held, wait)
                continue
            _, _, caller, inbox, data = heapq.heappop(self._held)
            if self._held_by[caller] > 1:
                self._held_by[caller] -= 1
            else:
                del self._held_by[caller]
            with self._sending.turn():
                try:
                    await self.nc.publish(inbox, data)
                except Exception:  # e.g. NATS closed: the next one is sent
                    log.exception("%s could not send a refusal", self.service)


def asker_waits(msg: Msg) -> float | None:
    """The seconds the asker of ``msg`` said it waits for the answer from sending it
    (``TIME_LEFT``); None when it did not say, or said no number."""
    told = (msg.headers or {}).get(TIME_LEFT)
    if told is None:
        return None
    try:
        left = float(told)
    except ValueError:
        return None
    return left if left == left else None  # NaN


def _time_left(msg: Msg) -> float:
    """How long the asker of ``msg`` waits from its arrival, less a margin for the way
    back, but at least ``_MIN_HOLD`` (a caller cannot ask to be answered at once);
    ``_MAX_HOLD`` when it does not say."""
    left = asker_waits(msg)
    return _MAX_HOLD if left is None else max(_MIN_HOLD, left * 0.8 - _MARGIN)
