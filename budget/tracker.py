"""``UsageTracker``: the host app's entry point for recording usage (seed API).

``record_usage`` prices the call at its own time, publishes an immutable ``UsageRecorded``
event and returns it. Publishing is pipelined and spooled locally when NATS is away.

At the interpreter's exit the process's tracker (``get_usage_tracker``) is closed: on its
loop if that still runs (a sync client's background thread), waiting at most
``EXIT_WAIT`` seconds; else (an ``asyncio.run`` that has ended) what it holds in memory is
spooled, for the next process to send.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, ParamSpec, TypeVar

from pydantic import TypeAdapter, ValidationError

from budget.checks import BudgetChecker, BudgetExceeded
from budget.config import Settings, load_settings
from budget.disabled import DISABLED_REASON, DisabledPublisher
from budget.loop_locks import LoopLock
from budget.pricing import Priced, PricingRegistry, Unpriced, get_pricing_registry
from budget.pricing.genai import canonical_provider
from budget.publisher import EventPublisher, PublisherConfig
from budget.recorded import notify_recorded
from budget.usage import attribution_id, normalize_usage, token_count, usage_from_response
from events import (
    CallKind,
    ImageUsage,
    OutOfBounds,
    Producer,
    Usage,
    UsageRecorded,
    encode,
    utc_now,
)
from events.rpc import CallAttributes, CheckResult
from events.usage import MAX_COST, MAX_DECIMAL_PLACES, Usd

__all__ = [
    "EXIT_WAIT",
    "BudgetExceeded",
    "UsageTracker",
    "get_usage_tracker",
    "start_usage_tracker",
]

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


class UsageTracker:
    def __init__(
        self,
        settings: Settings,
        registry: PricingRegistry,
        publisher: EventPublisher | DisabledPublisher,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.publisher = publisher
        self.checker = BudgetChecker(settings, registry)
        self._producer = Producer.here(settings.service_name)
        self._time_bounds = settings.time_bounds  # made anew on each read of the property
        self._warned_unpriced: set[tuple[str, str]] = set()
        self._recording: set[asyncio.Task[None]] = set()
        """Recordings of decorated calls, finished even if their caller is cancelled."""
        self.loop: asyncio.AbstractEventLoop | None = None
        """The event loop it was started on, where its coroutines must run."""
        self.closed = False

    async def start(self) -> None:
        """Start publishing (or spooling, while NATS is away) and answering checks."""
        self.loop = asyncio.get_running_loop()
        self.publisher.on_connect.append(self.checker.use)
        if self.publisher.client is not None:
            await self.checker.use(self.publisher.client)
        await self.publisher.start()

    async def check_budget(
        self,
        model: str,
        estimated_tokens: int = 0,
        user_id: str | None = None,
        project_id: str | None = None,
        *,
        provider: str | None = None,
        estimated_cost: Decimal | None = None,
        reserve: bool = True,
        caller: str | None = None,
        ttl_seconds: float | None = None,
    ) -> CheckResult:
        """May this call go ahead? ``estimated_tokens`` are priced as output tokens unless
        ``estimated_cost`` is given. Under BLOCK/THROTTLE policies an allowed call holds a
        reservation (``result.reservation_id``): pass it to ``record_usage`` to settle it,
        or to ``release_reservation`` if the call is not made; it expires after
        ``ttl_seconds`` (default the enforcer's ``reservation_ttl``, at most its
        ``reservation_ttl_max``). ``caller``: a service asking for someone else names them
        (the API: its key), so that only they may release what the enforcer reserves;
        default this tracker's own caller."""
        estimated_tokens = token_count("estimated_tokens", estimated_tokens)
        estimated_cost = _usd(estimated_cost)
        user_id = attribution_id("user_id", user_id)
        project_id = attribution_id("project_id", project_id)
        provider = canonical_provider(provider) if provider else None
        answer = self._check_without_nats(model, user_id, project_id, provider, estimated_cost)
        if isinstance(answer, CheckResult):
            return answer
        return await self.checker.check(
            answer,
            estimated_tokens,
            estimated_cost,
            reserve=reserve,
            caller=caller,
            ttl_seconds=ttl_seconds,
        )

    def admits_if_cached(
        self,
        model: str,
        estimated_tokens: int = 0,
        user_id: str | None = None,
        project_id: str | None = None,
        *,
        provider: str | None = None,
        estimated_cost: Decimal | None = None,
    ) -> bool:
        """True when ``check_budget`` would allow the call without reserving anything and
        the caches say so at once, from any thread (a disabled tracker; a cached snapshot
        with no BLOCK/THROTTLE policy): the call may go ahead. False: await
        ``check_budget``. Cheaper than a check: it builds no ``CheckResult``."""
        if isinstance(self.publisher, DisabledPublisher):
            return True
        return self.checker.admits_if_cached(
            model=model,
            provider=canonical_provider(provider) if provider else self.registry.provider_of(model),
            user_id=user_id,
            project_id=project_id,
            estimated_tokens=estimated_tokens,
            estimated_cost=_usd(estimated_cost),
        )

    def _check_without_nats(
        self,
        model: str,
        user_id: str | None,
        project_id: str | None,
        provider: str | None,
        estimated_cost: Decimal | None,
    ) -> CheckResult | CallAttributes:
        """The answer of a disabled tracker, else the call to ask about."""
        if isinstance(self.publisher, DisabledPublisher):
            cost = estimated_cost or Decimal(0)
            return CheckResult(
                allowed=True, action=None, reason=DISABLED_REASON, estimated_cost=cost
            )
        return CallAttributes(
            model=model,
            provider=provider or self.registry.provider_of(model),
            user_id=user_id,
            project_id=project_id,
        )

    async def release_reservation(self, reservation_id: str) -> None:
        await self.checker.release(reservation_id)

    def track_llm_call(
        self,
        *,
        model: str,
        provider: str | None = None,
        user_id: str | None = None,
        project_id: str | None = None,
        estimated_tokens: int = 0,
        estimated_cost: Decimal | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
        """Decorate an async function that calls a provider and returns its response: the
        budget is checked first (``BudgetExceeded`` if refused, its subclass
        ``BudgetCheckFailed`` if the check could not be made), usage is recorded from
        the response (OpenAI/Anthropic/Google objects or dicts), and the reservation is
        released if the function raises.

        Once the function has returned, nothing raises: a response without readable usage
        is recorded as the estimate (``estimated_reason`` says so; a warning is logged
        once per function), and usage that cannot be recorded at all is logged as an
        error and its reservation released. A function that is not async (a sync one, a
        generator) is refused with ``TypeError`` where it is decorated."""
        token_count("estimated_tokens", estimated_tokens)  # wrong: refused here, not per call
        estimated_cost = _usd(estimated_cost)
        provider_name = provider or self.registry.provider_of(model) or "unknown"
        call: dict[str, Any] = {"model": model, "provider": provider_name, "tags": tags}
        call |= {"user_id": user_id, "project_id": project_id}

        # Attributes that cannot make an event (a tag that is no string, a NUL character)
        # fail here, where the decorator is applied, not after each call has been paid for.
        encode(self.usage_event(**call))

        def decorate(function: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            _require_coroutine_function(function)
            estimate = _Estimate(function.__qualname__, estimated_tokens, estimated_cost)

            @functools.wraps(function)
            async def tracked(*args: P.args, **kwargs: P.kwargs) -> R:
                result = await self.check_budget(
                    model,
                    estimated_tokens,
                    user_id,
                    project_id,
                    provider=provider_name,
                    estimated_cost=estimated_cost,
                )
                if not result.allowed:
                    raise BudgetExceeded.of(result)
                try:
                    response = await function(*args, **kwargs)
                except BaseException:
                    if result.reservation_id is not None:
                        await self.release_reservation(result.reservation_id)
                    raise
                recording = self._record_tracked(response, estimate, call, result.reservation_id)
                await self._unless_cancelled(recording)
                return response

            return tracked

        return decorate

    async def _unless_cancelled(self, recording: Coroutine[Any, Any, None]) -> None:
        """Await ``recording`` (of a call that happened, so paid for); the caller
        cancelled meanwhile (an ``asyncio.timeout`` around the call while the usage waits
        for room in the publisher) goes, while the recording goes on to its end."""
        task = asyncio.ensure_future(recording)
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)
        await asyncio.shield(task)

    async def _record_tracked(
        self,
        response: object,
        estimate: _Estimate,
        call: Mapping[str, Any],
        reservation_id: str | None,
    ) -> None:
        """Record a call that happened; never raises (the provider has answered)."""
        try:
            try:
                event = self.usage_event(**call, usage=response, reservation_id=reservation_id)
            except Exception as exc:  # whatever reading the response raised
                why = f"{type(exc).__name__}: {exc}"
                event = self._estimated_event(estimate, call, reservation_id, why)
            await self._publish(event)
        except Exception as exc:
            log.exception(
                "could not record the usage of %s (%s: %s); its reservation is released",
                estimate.function,
                type(exc).__name__,
                exc,
            )
            if reservation_id is not None:
                await self.release_reservation(reservation_id)

    def _estimated_event(
        self, estimate: _Estimate, call: Mapping[str, Any], reservation_id: str | None, why: str
    ) -> UsageRecorded:
        """The estimate as a usage event: ``estimated_tokens`` as output tokens, priced,
        or ``estimated_cost`` as given; with neither, unpriced (not $0, which would drop
        the call from every total unseen)."""
        if not estimate.warned:
            estimate.warned = True
            log.warning(
                "%s returned no usage the tracker can read (%s); recording its pre-call"
                " estimate instead, marked as estimated",
                estimate.function,
                why,
            )
        reason = f"no usable usage in the response ({why[:300]}); recorded the pre-call estimate"
        event = self.usage_event(
            **call,
            output_tokens=estimate.tokens,
            reservation_id=reservation_id,
            estimated_reason=reason,
        )
        update: dict[str, object]
        if estimate.cost is not None:
            update = {"cost": estimate.cost, "price": None, "unpriced_reason": None}
        elif not estimate.tokens:
            update = {"cost": None, "price": None, "unpriced_reason": _NO_ESTIMATE}
        else:
            return event
        return UsageRecorded.model_validate(event.model_dump() | update)

    async def record_usage(self, **fields: Any) -> UsageRecorded:
        """Record one provider call and return the event with its cost; the arguments
        are ``usage_event``'s. Publishing is pipelined: the event is stored in JetStream
        or the local spool soon after this returns (``flush`` waits for it)."""
        event = self.usage_event(**fields)
        await self._publish(event)
        return event

    async def _publish(self, event: UsageRecorded) -> None:
        notify_recorded(event)  # observers (``budget.otel``) see what is being recorded
        await self.publisher.publish(event)

    def usage_event(
        self,
        *,
        model: str,
        provider: str,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        embedding_tokens: int = 0,
        audio_seconds: int | float | Decimal | str = 0,
        images: ImageUsage | Mapping[str, Any] | None = None,
        usage: object | None = None,
        kind: CallKind | None = None,
        user_id: str | None = None,
        project_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        occurred_at: datetime | None = None,
        reservation_id: str | None = None,
        event_id: uuid.UUID | None = None,
        estimated_reason: str | None = None,
        raw_usage: object | None = None,
    ) -> UsageRecorded:
        """The priced ``UsageRecorded`` event for one provider call (not yet published).

        Counts follow the seed: ``input_tokens`` includes ``cached_tokens`` and
        ``cache_write_tokens``; ``reasoning_tokens`` are part of ``output_tokens``. Or pass
        the SDK's raw ``usage`` object (OpenAI, Anthropic, Google) instead of counts (both:
        ``ValueError``).
        Inconsistent counts, or an ``occurred_at`` without a time zone or outside
        ``max_clock_skew`` and ``max_event_age`` of now, raise ``ValueError``. A model
        without a price, or one whose pricing fails, is recorded unpriced (cost ``None``,
        ``unpriced_reason`` says why), never as $0. ``estimated_reason``: the counts are an
        estimate, and why. ``raw_usage``: the provider's usage object the counts (or
        ``usage``) were read from: a model that prices audio or image tokens apart finds
        them there, and leaves the call unpriced.
        """
        # Spelt as checks and provider policies spell it ("OpenAI" is "openai").
        provider = canonical_provider(provider)
        if usage is not None:
            counts = {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cached_tokens": cached_tokens,
                "cache_write_tokens": cache_write_tokens,
                "reasoning_tokens": reasoning_tokens,
                "embedding_tokens": embedding_tokens,
                "audio_seconds": audio_seconds,
                "images": images,
            }
            if given := [name for name, count in counts.items() if count]:
                # one of the two would be dropped unseen: which did the caller mean?
                raise ValueError(
                    f"pass either usage= (the provider's usage object) or counts, not both:"
                    f" {', '.join(given)} given with usage=; drop one of them"
                )
            normalized = usage_from_response(usage)
            raw_usage = usage if raw_usage is None else raw_usage
        else:
            normalized = normalize_usage(
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cached_tokens=cached_tokens,
                cache_write_tokens=cache_write_tokens,
                reasoning_tokens=reasoning_tokens,
                embedding_tokens=embedding_tokens,
                audio_seconds=audio_seconds,
                images=images,
            )
        at = occurred_at or utc_now()
        if at.tzinfo is None or at.utcoffset() is None:
            # The contract refuses it too (``UtcDatetime``): which instant is meant, and so
            # which day and month the call costs in, would be a guess.
            raise ValueError(
                f"occurred_at {at.isoformat()} has no time zone: pass an aware time,"
                " e.g. datetime.now(UTC) or the provider's timestamp with its offset"
            )
        out_of_bounds = self._time_bounds.time_violation(at, utc_now())
        if out_of_bounds is not None:
            raise OutOfBounds(out_of_bounds)
        priced = self._price(provider, model, normalized, at, raw_usage)
        if isinstance(priced, Priced):
            cost, source, reason = priced.cost, priced.source, None
        else:
            cost, source, reason = None, None, priced.reason
            if (provider, model) not in self._warned_unpriced:
                if len(self._warned_unpriced) >= _WARNED_KEPT:
                    self._warned_unpriced.clear()  # warned again: better than unbounded
                self._warned_unpriced.add((provider, model))
                log.warning("recording usage of %s/%s unpriced: %s", provider, model, reason)
        identity = {} if event_id is None else {"event_id": event_id}
        return UsageRecorded(
            **identity,
            occurred_at=at,
            producer=self._producer,
            provider=provider,
            model=model,
            kind=kind or _infer_kind(normalized),
            usage=normalized,
            cost=cost,
            price=source,
            unpriced_reason=reason,
            user_id=user_id,
            project_id=project_id,
            tags=dict(tags or {}),
            reservation_id=reservation_id,
            estimated_reason=estimated_reason,
        )

    def _price(
        self,
        provider: str,
        model: str,
        usage: Usage,
        at: datetime,
        raw_usage: object | None = None,
    ) -> Priced | Unpriced:
        """The registry's answer; a failure inside it leaves the call unpriced, with the
        reason, rather than unrecorded (``budget reprice`` can price it later)."""
        try:
            return self.registry.price(
                provider=provider, model=model, usage=usage, at=at, raw_usage=raw_usage
            )
        except Exception as exc:
            log.exception("pricing %s/%s failed; recording it unpriced", provider, model)
            return Unpriced(f"pricing failed: {type(exc).__name__}: {exc}"[:500])

    async def flush(self, within: float | None = None) -> None:
        """Wait until everything recorded so far is stored in JetStream or the spool, at
        most ``within`` seconds (default ``ack_timeout`` + 10 s); ``NotStored``
        (``budget.publisher``) if some events are then stored in neither, saying how many
        and why: they stay in memory and are tried again."""
        await self.publisher.flush(within)

    async def close(self) -> None:
        """Store what was recorded (in JetStream, or the spool after ``ack_timeout`` + 1 s)
        and disconnect. Call it before the loop ends; the process's own tracker is also
        closed at exit."""
        self.closed = True
        self.checker.close()
        await asyncio.gather(*self._recording, return_exceptions=True)  # each logs its own
        await self.publisher.close()

    def abandon(self) -> None:
        """Its loop has ended without ``close``: spool what it holds in memory, here and
        now, for the next tracker (of this process or the next) to send."""
        self.closed = True
        self.publisher.abandon()


_NO_ESTIMATE = "no usage in the response and no estimate given"
_WARNED_KEPT = 10_000
"""Unpriced (provider, model) pairs remembered, to warn once of each: the API's tracker
records whatever models its keys post, so without a bound each new name is kept for good."""


@dataclass(slots=True)
class _Estimate:
    """What a decorated function's calls are estimated at, and whether it was warned of."""

    function: str
    tokens: int
    cost: Decimal | None
    warned: bool = False


def _require_coroutine_function(function: Callable[..., object]) -> None:
    """Refuse what ``await function()`` cannot track: a sync function would make (and pay
    for) its call before the await failed, unrecorded; an async generator's calls come
    while it is iterated, after the wrapper has returned."""
    if inspect.iscoroutinefunction(function):
        return
    name = getattr(function, "__qualname__", repr(function))
    raise TypeError(
        "track_llm_call decorates an async function (async def) that returns the"
        f" provider's response; {name} is not one: make it async, or call"
        " check_budget and record_usage around it"
    )


def _infer_kind(usage: Usage) -> CallKind:
    if usage.images is not None:
        return "image"
    if usage.embedding_tokens:
        return "embedding"
    if usage.audio_seconds and not usage.input_tokens:
        return "audio"
    return "chat"


_tracker: UsageTracker | None = None
_lock = LoopLock()


async def start_usage_tracker(settings: Settings) -> UsageTracker:
    """A new tracker, publishing (or spooling) and answering checks; ``close`` it."""
    publisher = EventPublisher(PublisherConfig.from_settings(settings))
    registry = await get_pricing_registry(settings.price_overrides)
    tracker = UsageTracker(settings, registry, publisher)
    await tracker.start()
    return tracker


async def get_usage_tracker(settings: Settings | None = None) -> UsageTracker:
    """The process's tracker, connected on first use (settings from config.yaml and
    ``BUDGET_*`` variables unless given); a no-op one with ``budget.enabled: false``
    (``budget.disabled``). A tracker whose loop has ended (an earlier ``asyncio.run``)
    is abandoned and a new one started on the running loop: the old one's connection and
    tasks died with its loop, and a flush on it would wait forever. One the host closed
    is replaced too: it sends nothing any more (what it is given waits in the spool)."""
    global _tracker
    async with _lock():
        if _tracker is not None and _tracker.loop is not None and _tracker.loop.is_closed():
            _tracker.abandon()
            _tracker = None
        if _tracker is not None and _tracker.closed:
            _tracker = None
        if _tracker is None:
            settings = settings or load_settings()
            if settings.enabled:
                _tracker = await start_usage_tracker(settings)
            else:
                registry = await get_pricing_registry(settings.price_overrides)
                _tracker = UsageTracker(settings, registry, DisabledPublisher())
        return _tracker


EXIT_WAIT = 15.0
"""Seconds an exiting process waits for its tracker to close: its publisher waits up to
``ack_timeout`` + 1 s for acknowledgements, then spools the rest (a commit may wait 5 s
for another process's)."""


def _close_at_exit() -> None:
    """The process's tracker stores what it holds before the interpreter goes. Registered
    at import, so it runs after the hooks registered later (``budget.instrumentation``'s,
    which first hands over what sync clients left with the tracker's loop)."""
    tracker = _tracker
    if tracker is None or tracker.closed:
        return
    loop = tracker.loop
    if loop is None or not loop.is_running():
        tracker.abandon()
        return
    log.debug("closing the budget tracker at exit")
    closing = asyncio.run_coroutine_threadsafe(tracker.close(), loop)
    try:
        closing.result(EXIT_WAIT)
    except Exception as exc:
        log.error(
            "the budget tracker did not close within %ss at exit (%r): what it still held"
            " in memory is lost",
            EXIT_WAIT,
            exc,
        )


atexit.register(_close_at_exit)


def _usd(amount: Decimal | float | int | str | None) -> Decimal | None:
    """A caller's estimate as exact money: a float as its shortest repr (0.05 is 0.05, as
    the enforcer's requests read it), never its binary value; refused unless a cost could
    be it (finite, not negative, within the contract's ``Usd``): one beyond them failed the
    enforcer's request, or was allowed without it and then could not be recorded."""
    if (
        isinstance(amount, Decimal)
        and amount.is_finite()
        and 0 <= amount <= MAX_COST
        and int(amount.as_tuple().exponent) >= -MAX_DECIMAL_PLACES
    ):
        return amount  # the usual estimate, checked without pydantic (a check's hot path)
    if amount is None:
        return None
    try:
        usd = Decimal(str(amount))
    except ArithmeticError:
        usd = Decimal("NaN")
    if not usd.is_finite() or usd < 0:
        raise ValueError(f"estimated_cost must be a non-negative number of USD, not {amount!r}")
    try:
        return _COST.validate_python(usd)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise ValueError(f"estimated_cost must be a cost, not {amount!r}: {reason}") from None


_COST: TypeAdapter[Decimal] = TypeAdapter(Usd)
