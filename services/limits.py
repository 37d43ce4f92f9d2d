"""Per-caller limits for the request/reply services: a token bucket (sustained rate and
burst) and a cap on requests in flight, for each caller a request subject names
(``<prefix>.rpc.<caller>.<name>``), so one greedy host cannot starve the others.

A request over a limit is answered at once with an ``RpcError`` carrying ``retry_after``,
before its body is decoded: a refusal costs a dictionary look-up and one small publish.
The service's own caller (its ``Settings.caller``: the API and the admin tools speak for
many users) is never limited.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg

from budget.config import Settings
from events import Topology
from events.rpc import RpcError

__all__ = ["CallerLimits", "Refusal", "limited"]

_FORGET_AFTER = 10_000
"""Callers remembered before the idle ones (bucket full, nothing in flight) are forgotten."""
_MIN_RETRY = 0.001


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    retry_after: float


@dataclass(slots=True)
class _Bucket:
    tokens: float
    refilled: float
    in_flight: int = 0


class CallerLimits:
    """``rate`` requests/s sustained and ``burst`` at once per caller, at most
    ``in_flight`` of a caller's requests being worked on; ``exempt`` is never limited.
    ``settings``: the prefix of the settings' names, for refusals. ``clock``: for tests."""

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        in_flight: int,
        exempt: str,
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
            exempt=settings.caller,
        )

    @classmethod
    def of_query_service(cls, settings: Settings) -> CallerLimits:
        return cls(
            rate=settings.caller_query_rate,
            burst=settings.caller_query_burst,
            in_flight=settings.caller_query_in_flight,
            exempt=settings.caller,
            settings="caller_query",
        )

    def admit(self, caller: str) -> Refusal | None:
        """None: admitted, and counted in flight until ``done(caller)``; else why not."""
        if caller == self.exempt:
            return None
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= _FORGET_AFTER:
                self._forget_idle(now)
            bucket = self._buckets[caller] = _Bucket(float(self.burst), now)
        else:
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

    def _forget_idle(self, now: float) -> None:
        idle = [
            caller
            for caller, b in self._buckets.items()
            if b.in_flight == 0 and b.tokens + (now - b.refilled) * self.rate >= self.burst
        ]
        for caller in idle:
            del self._buckets[caller]


def limited(
    nc: Client,
    limits: CallerLimits,
    topology: Topology,
    *,
    service: str,
    callback: Callable[[Msg, str], Awaitable[bool]],
) -> Callable[[Msg], Awaitable[None]]:
    """A subscription callback: a request within its caller's limits goes to
    ``callback(msg, caller)``, any other is refused at once with ``retry_after``, its body
    unread. The request counts in flight until ``callback`` returns, or, when it returns
    True (it handed the request on), until whoever answers calls ``limits.done(caller)``."""

    async def on_message(msg: Msg) -> None:
        caller = topology.caller_of(msg.subject)
        refusal = limits.admit(caller)
        if refusal is None:
            handed_on = False
            try:
                handed_on = await callback(msg, caller)
            finally:
                if not handed_on:
                    limits.done(caller)
        elif msg.reply:
            error = RpcError(
                error=f"{service}: too many requests: {refusal.reason}; retry after"
                f" {refusal.retry_after:.3f}s",
                retry_after=round(refusal.retry_after, 3),
            )
            await nc.publish(msg.reply, error.model_dump_json().encode())

    return on_message
