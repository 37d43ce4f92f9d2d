"""The life of one instrumented provider call: a budget check before it, its usage recorded
once after it (with the check's reservation id), the reservation released if it fails.

The tracker is asynchronous and lives on one event loop. Async clients await it there;
sync clients reach it from their own thread: the check waits for the loop's answer, while
recording and releasing are handed to the loop without waiting (publishing is pipelined
anyway, and a stream finishing in a garbage collector's finaliser must not block).
At the interpreter's exit, what sync clients handed over is run on its loop before the
process's tracker closes (``budget.tracker``).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from budget.checks import BudgetExceeded, answer_or_release, answer_or_release_sync
from budget.disabled import DisabledPublisher
from budget.instrumentation.prompts import UNSTATED_MODEL
from budget.periods import quarter_hour_number
from budget.pricing import Priced
from budget.publisher import EventPublisher
from budget.recorded import FailedCall, InstrumentedCall, notify_failed, notify_recorded
from budget.tracker import EXIT_WAIT, UsageTracker, get_usage_tracker
from budget.usage import attribution_id, usage_from_response
from events import CallKind, Event, Usage, utc_now
from events.rpc import CheckResult

__all__ = [
    "CALL_KEYWORDS",
    "Attribution",
    "Call",
    "Lifecycle",
    "Measured",
    "Plan",
    "Refusal",
    "attribute_to",
    "call_scope",
    "enclosing_scope",
    "given_tags",
    "in_scope",
    "retry_after",
    "retry_after_headers",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

CALL_KEYWORDS = ("budget_user_id", "budget_project_id", "budget_tags")
"""Extra keywords an instrumented method takes (and removes before the SDK sees them)."""


@dataclass(frozen=True, slots=True)
class Attribution:
    """Whom a call is charged to. Layered: the client's, then ``attribute_to``'s, then the
    call's own keywords; a layer's ``None`` keeps the one below, tags are merged."""

    user_id: str | None = None
    project_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Refused where given, before any request: a usage event that cannot be made
        # once the provider has answered would lose the call's cost.
        for name in ("user_id", "project_id"):
            try:
                attribution_id(name, getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"budget: {exc}") from None
        for key, value in self.tags.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(
                    "budget: tags must map strings to strings, got"
                    f" {key!r:.60} ({type(key).__name__}): {value!r:.60} ({type(value).__name__})"
                )

    def under(self, top: Attribution | None) -> Attribution:
        if top is None:
            return self
        return Attribution(
            user_id=self.user_id if top.user_id is None else top.user_id,
            project_id=self.project_id if top.project_id is None else top.project_id,
            tags={**self.tags, **top.tags} if top.tags else self.tags,
        )


def given_tags(tags: object) -> dict[str, str]:
    """A copy of the ``tags`` given (None: none). Anything but a mapping is refused where
    it is given: ``dict()`` would take ``["ab"]`` as the tag ``a=b``."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise ValueError(
            f"budget: tags must map strings to strings, got {tags!r:.60} ({type(tags).__name__})"
        )
    return dict(tags)


_scoped: ContextVar[Attribution | None] = ContextVar("budget_attribution", default=None)


@contextlib.contextmanager
def attribute_to(
    *,
    user_id: str | None = None,
    project_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[None]:
    """Charge the instrumented calls made inside the block to this user, project or tags
    (over the client's own; nested blocks layer the same way)."""
    with in_scope(_over_enclosing(Attribution(user_id, project_id, given_tags(tags)))):
        yield


def call_scope(kwargs: MutableMapping[str, Any]) -> Attribution | None:
    """The scope a call is made in: its ``budget_*`` keywords (taken out of ``kwargs``)
    over the enclosing ``attribute_to`` blocks, for a method whose requests are sent by
    another one it calls, or later (a stream's, as it is read: ``in_scope``); None when
    it has neither."""
    call = _call_attribution(kwargs)
    return enclosing_scope() if call is None else _over_enclosing(call)


def enclosing_scope() -> Attribution | None:
    """The ``attribute_to`` blocks (or ``in_scope``) the caller is in; None outside any."""
    return _scoped.get()


@contextlib.contextmanager
def in_scope(attribution: Attribution) -> Iterator[None]:
    """``attribution`` as the enclosing scope (``call_scope``'s) inside the block."""
    token = _scoped.set(attribution)
    try:
        yield
    finally:
        _scoped.reset(token)


def _over_enclosing(mine: Attribution) -> Attribution:
    """``mine`` layered over the enclosing scope, if any."""
    outer = _scoped.get()
    return mine if outer is None else outer.under(mine)


def _call_attribution(kwargs: MutableMapping[str, Any]) -> Attribution | None:
    if not any(key in kwargs for key in CALL_KEYWORDS):
        return None
    return Attribution(
        kwargs.pop("budget_user_id", None),
        kwargs.pop("budget_project_id", None),
        given_tags(kwargs.pop("budget_tags", None)),
    )


@dataclass(slots=True)
class Plan:
    """What the request says about the call before it is made."""

    model: str
    kind: CallKind = "chat"
    prompt_tokens: int = 0
    """Estimated from the request's text."""
    max_output_tokens: int = 0
    estimate: Usage | None = None
    """For calls not priced by tokens (images): the usage to check the budget with."""
    stream: bool = False
    strip_usage_chunk: bool = False
    """OpenAI chat: ``include_usage`` was set for the tracker, not the caller."""
    operation: str | None = None
    """The GenAI conventions' ``gen_ai.operation.name`` where the kind's is not the one
    (``text_completion``, ``generate_content``)."""


@dataclass(frozen=True, slots=True)
class Measured:
    """A call's usage as the response tells it; ``estimated_reason`` when it does not
    tell all (a stream abandoned before its usage arrived)."""

    usage: Usage
    model: str | None = None
    estimated_reason: str | None = None
    raw_usage: object | None = None
    """The provider's usage object ``usage`` was read from, or the answer holding it
    (audio or image tokens in it, or the service tier the answer names, may have a price
    of their own: ``PricingRegistry.price``)."""

    @classmethod
    def read(
        cls,
        raw_usage: object,
        model: str | None,
        estimated_reason: str | None = None,
        *,
        answer: object | None = None,
    ) -> Measured:
        """The usage a provider's usage object tells, the object kept (``raw_usage``), or
        the ``answer`` it came in when that tells more of the price (a service tier)."""
        kept = raw_usage if answer is None else answer
        return cls(usage_from_response(raw_usage), model, estimated_reason, kept)


Refusal = Callable[[BudgetExceeded], BaseException]
"""Turns a refusal into the exception the caller sees (``BudgetExceeded`` itself, or the
provider's own error shape)."""


def retry_after(refused: BudgetExceeded) -> int | None:
    """The seconds after which the refused call may be tried again, whole (rounded up), as
    an HTTP ``Retry-After`` says them; None when the refusal tells none."""
    seconds = refused.result.retry_after
    return None if seconds is None else max(math.ceil(seconds), 0)


def retry_after_headers(refused: BudgetExceeded) -> dict[str, str]:
    """``retry_after`` as the headers of a provider's 429 (none when it tells none)."""
    seconds = retry_after(refused)
    return {} if seconds is None else {"retry-after": str(seconds)}


class Lifecycle:
    """One instrumented client's link to its tracker."""

    def __init__(
        self,
        *,
        provider: str,
        attribution: Attribution,
        refusal: Refusal,
        tracker: UsageTracker | None,
    ) -> None:
        self.provider = provider
        self.attribution = attribution
        self.refusal = refusal
        self._given = tracker
        self._process: UsageTracker | None = None
        """The process's tracker (``get_usage_tracker``) as last found, when none is given."""
        self._input_rates: dict[tuple[str, int], Decimal | None] = {}

    def attribution_for(self, kwargs: MutableMapping[str, Any]) -> Attribution:
        call = _call_attribution(kwargs)
        scoped = _scoped.get()
        if call is None and scoped is None:
            return self.attribution
        return self.attribution.under(scoped).under(call)

    async def tracker(self) -> UsageTracker:
        tracker = self._known_tracker()
        if tracker is None:
            tracker = self._process = await get_usage_tracker()
        return tracker

    def tracker_sync(self) -> UsageTracker:
        tracker = self._known_tracker()
        if tracker is None:
            tracker = self._process = _background.run(get_usage_tracker())
        return tracker

    def _known_tracker(self) -> UsageTracker | None:
        """The given tracker, else the process's as last found while it is open and its
        loop lives; None when it must be asked for: after an ``asyncio.run`` ended the
        loop it was started on, or the host closed it, the process has a new one, and the
        old one sends nothing (its loop can run nothing more; closed, it only spools)."""
        if self._given is not None:
            return self._given
        process = self._process
        if process is None or process.closed:
            return None
        if process.loop is not None and process.loop.is_closed():
            return None
        return process

    async def begin(self, plan: Plan, attribution: Attribution) -> Call:
        """Check the budget (raising the refusal); the admitted call."""
        started_ns = time.time_ns()  # the call, as its caller sees it, begins with the check
        tracker = await self.tracker()
        cost = self._estimated_cost(tracker, plan)
        if self._admitted_at_once(tracker, plan, attribution, cost):
            return Call(tracker, self.provider, plan, attribution, None, started_ns)
        check = self._check(tracker, plan, attribution, cost)
        checking: asyncio.Future[CheckResult]
        if tracker.loop is None or tracker.loop is asyncio.get_running_loop():
            checking = asyncio.ensure_future(check)
        else:  # a tracker another loop (another thread) started
            checking = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(check, tracker.loop))
        # Also here: an answer from another loop may be on its way when this one cancels.
        release = functools.partial(self._release_unused, tracker, plan, attribution)
        result = await answer_or_release(checking, release)
        return self._admitted(tracker, plan, attribution, result, started_ns)

    def _release_unused(
        self, tracker: UsageTracker, plan: Plan, attribution: Attribution, reservation_id: str
    ) -> None:
        """Release the reservation of a check whose call was cancelled (or interrupted)."""
        Call(tracker, self.provider, plan, attribution, reservation_id, time.time_ns()).release()

    def begin_sync(self, plan: Plan, attribution: Attribution) -> Call:
        """``begin`` from a sync client's thread: answered there when the caches can (no
        trip to the tracker's loop), else on the loop, waiting."""
        started_ns = time.time_ns()
        tracker = self.tracker_sync()
        cost = self._estimated_cost(tracker, plan)
        if self._admitted_at_once(tracker, plan, attribution, cost):
            return Call(tracker, self.provider, plan, attribution, None, started_ns)
        release = functools.partial(self._release_unused, tracker, plan, attribution)
        checking = _loop_runner(tracker).start(self._check(tracker, plan, attribution, cost))
        result = answer_or_release_sync(checking, release)
        return self._admitted(tracker, plan, attribution, result, started_ns)

    def _admitted_at_once(
        self, tracker: UsageTracker, plan: Plan, attribution: Attribution, cost: Decimal | None
    ) -> bool:
        """The local check path's answer without a ``CheckResult`` (none is needed when
        the call is allowed with nothing reserved): the bulk of a check's cost."""
        return tracker.admits_if_cached(
            plan.model,
            plan.prompt_tokens + plan.max_output_tokens,
            attribution.user_id,
            attribution.project_id,
            provider=self.provider,
            estimated_cost=cost,
        )

    def _check(
        self, tracker: UsageTracker, plan: Plan, attribution: Attribution, cost: Decimal | None
    ) -> Coroutine[Any, Any, CheckResult]:
        return tracker.check_budget(
            plan.model,
            plan.prompt_tokens + plan.max_output_tokens,
            attribution.user_id,
            attribution.project_id,
            provider=self.provider,
            estimated_cost=cost,
        )

    def _admitted(
        self,
        tracker: UsageTracker,
        plan: Plan,
        attribution: Attribution,
        result: CheckResult,
        started_ns: int,
    ) -> Call:
        if not result.allowed:
            raise self.refusal(BudgetExceeded.of(result))
        return Call(tracker, self.provider, plan, attribution, result.reservation_id, started_ns)

    def _estimated_cost(self, tracker: UsageTracker, plan: Plan) -> Decimal | None:
        """The request's output allowance at the output price plus its prompt at the input
        price (both rates kept for the quarter hour, as the checker keeps its estimates); None
        when the model has no price (the checker then says so)."""
        if plan.estimate is not None:
            priced = tracker.registry.price(
                provider=self.provider, model=plan.model, usage=plan.estimate, at=utc_now()
            )
            return priced.cost if isinstance(priced, Priced) else None
        output = tracker.checker.estimate(plan.model, self.provider, plan.max_output_tokens)
        if output is None or not plan.prompt_tokens:
            return output
        rate = self._input_rate(tracker, plan.model)
        return None if rate is None else output + rate * plan.prompt_tokens

    def _input_rate(self, tracker: UsageTracker, model: str) -> Decimal | None:
        now = utc_now()
        key = (model, quarter_hour_number(now))  # as the checker keeps its estimates
        if key not in self._input_rates:
            if len(self._input_rates) >= 1_000:
                self._input_rates.clear()
            # A thousand tokens: below every long-context tier, whose rate would double
            # the estimate of an ordinary prompt.
            sample = Usage(input_uncached=1_000)
            priced = tracker.registry.price(
                provider=self.provider, model=model, usage=sample, at=now
            )
            rate = priced.cost / 1_000 if isinstance(priced, Priced) else None
            self._input_rates[key] = rate
        return self._input_rates[key]


class Call:
    """A call the budget admitted (its check begun at ``started_ns``, ``time.time_ns()``):
    ``record`` its usage once, or ``release`` its reservation; whichever comes first
    settles it, later ones do nothing."""

    __slots__ = (
        "attribution",
        "plan",
        "provider",
        "reservation_id",
        "settled",
        "started_ns",
        "tracker",
    )

    def __init__(
        self,
        tracker: UsageTracker,
        provider: str,
        plan: Plan,
        attribution: Attribution,
        reservation_id: str | None,
        started_ns: int,
    ) -> None:
        self.tracker = tracker
        self.provider = provider
        self.plan = plan
        self.attribution = attribution
        self.reservation_id = reservation_id
        self.started_ns = started_ns
        self.settled = False

    def record(self, measured: Measured, error: BaseException | None = None) -> None:
        """Publish the call's usage event (on the tracker's loop, not waiting); never
        raises: the provider has answered (``error``: what ended its stream after it had
        begun, for the observers)."""
        if self.settled:
            return
        self.settled = True
        try:
            event = self.tracker.usage_event(
                model=measured.model or self.plan.model,
                provider=self.provider,
                usage=measured.usage,
                kind=self.plan.kind,
                user_id=self.attribution.user_id,
                project_id=self.attribution.project_id,
                tags=self.attribution.tags,
                reservation_id=self.reservation_id,
                estimated_reason=measured.estimated_reason,
                raw_usage=measured.raw_usage,
            )
        except Exception:
            log.exception("could not record the usage of a %s call", self.provider)
            self._release_now()
            return
        # Observers (``budget.otel``) hear of it here, in the caller's context (its span),
        # with what the event does not say: the model asked for, when the call began.
        notify_recorded(event, self._instrumented(measured.model, error))
        try:
            runner = _loop_runner(self.tracker)
            runner.call(functools.partial(runner.publish, self.tracker.publisher, event))
        except Exception:  # the tracker's loop has ended (an asyncio.run before this one)
            log.exception(
                "could not record the usage of a %s call: its budget tracker is closed",
                self.provider,
            )

    def release(self) -> None:
        """The call was never made, or failed before any response: give the reservation
        back."""
        if self.settled:
            return
        self.settled = True
        self._release_now()

    def fail(self, error: BaseException) -> None:
        """The call failed (or was cancelled) before any response, with ``error``:
        ``release``, and the observers (``budget.otel``) hear of it, in the caller's
        context; never raises, ``error`` is what the caller must see."""
        if self.settled:
            return
        self.release()
        notify_failed(FailedCall(self.provider, self.plan.kind, self._instrumented(None), error))

    def _instrumented(
        self, response_model: str | None, error: BaseException | None = None
    ) -> InstrumentedCall:
        """What the event of this call does not say, for the observers."""
        plan = self.plan
        requested = None if plan.model == UNSTATED_MODEL else plan.model
        return InstrumentedCall(requested, response_model, self.started_ns, plan.operation, error)

    def _release_now(self) -> None:
        """Never raises: it runs as the call's own error propagates (which must stay the
        error the caller sees)."""
        if self.reservation_id is None:
            return
        release = self.tracker.release_reservation(self.reservation_id)
        try:
            _loop_runner(self.tracker).submit(release)
        except Exception:  # the tracker's loop has ended; the hold expires on its own
            release.close()
            log.exception("could not release reservation %s", self.reservation_id)


HANDOFF_INTERVAL = 0.005
"""Seconds between the loop's collections of what sync clients hand over, while they
keep handing things over."""


class _LoopRunner:
    """Runs the tracker's work (coroutines, events to publish) on the tracker's loop, from
    that loop or any thread.

    Work handed over from other threads waits in a list. The first one wakes the
    loop; while more keep coming the loop collects them on a timer: waking the loop (a
    write to its self-pipe, then the GIL passed between the threads) for every call would
    cost a busy sync client more than the call's own record."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pending: set[asyncio.Task[Any]] = set()
        self._handed: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._collecting = False

    def start(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Its future, for this thread to wait on (which must not be the loop's)."""
        if self.on_its_loop():
            coroutine.close()
            raise RuntimeError(
                "a sync client was called on the event loop of its budget tracker; use the"
                " async client there (or call the sync one from another thread)"
            )
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def on_its_loop(self) -> bool:
        """Whether the caller runs on the loop (an async client), not in another thread."""
        return _running_loop() is self.loop

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Start it without waiting; a failure is logged."""
        self.call(functools.partial(self._start, coroutine))

    def publish(self, publisher: EventPublisher | DisabledPublisher, event: Event) -> None:
        """On the loop: hand ``event`` to ``publisher`` without a task (one only when its
        pipeline is full); a failure is logged."""
        try:
            if not publisher.offer(event):
                self._start(publisher.publish(event))
        except Exception as exc:  # e.g. a credential that may not publish usage
            log.error("budget tracker: %s: %s", type(exc).__name__, exc, exc_info=exc)

    def call(self, work: Callable[[], None]) -> None:
        """Run ``work`` on the loop: at once from the loop, else handed over."""
        if self.on_its_loop():
            work()
            return
        with self._lock:
            self._handed.append(work)
            if self._collecting:
                return
            self._collecting = True
        self.loop.call_soon_threadsafe(self._collect)

    async def settle(self) -> None:
        """On the loop: run what was handed over, and wait for the work it started
        (publishes waiting for room, releases)."""
        with self._lock:
            handed, self._handed = self._handed, []
        for work in handed:
            work()
        await asyncio.gather(*self._pending, return_exceptions=True)

    def _collect(self) -> None:
        """Run what was handed over, and look again soon; stop when nothing came."""
        with self._lock:
            handed, self._handed = self._handed, []
            if not handed:
                self._collecting = False
                return
        for work in handed:
            work()
        self.loop.call_later(HANDOFF_INTERVAL, self._collect)

    def _start(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = self.loop.create_task(coroutine)
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("budget tracker: %s: %s", type(exc).__name__, exc, exc_info=exc)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _BackgroundLoop:
    """An event loop in a daemon thread, for a tracker that sync clients start."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                if sys.is_finalizing():
                    # A stream first recorded by the collector as the interpreter exits:
                    # no thread can start now, and waiting for one would hang the exit.
                    raise RuntimeError("the interpreter is exiting: no loop can be started")
                self._loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=self._loop.run_forever, name="budget-tracker", daemon=True
                )
                thread.start()
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, UsageTracker]) -> UsageTracker:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()


_background = _BackgroundLoop()
_runners: dict[int, _LoopRunner] = {}


def _loop_runner(tracker: UsageTracker) -> _LoopRunner:
    """The runner of the loop the tracker was started on (a tracker never started, as a
    disabled one, needs no loop of its own: the background one serves it)."""
    loop = tracker.loop or _background.loop
    runner = _runners.get(id(loop))
    if runner is None or runner.loop is not loop:
        runner = _runners[id(loop)] = _LoopRunner(loop)
    return runner


def _settle_at_exit() -> None:
    """What sync clients handed over is run on loops still running (a background
    tracker's) before ``budget.tracker``'s exit hook closes the tracker: registered after
    it (this module imports that one), this hook runs before it."""
    for runner in list(_runners.values()):
        if not runner.loop.is_running():
            continue
        settling = asyncio.run_coroutine_threadsafe(runner.settle(), runner.loop)
        try:
            settling.result(EXIT_WAIT)
        except Exception as exc:
            log.error("budget tracker: what sync clients handed over did not settle (%r)", exc)


atexit.register(_settle_at_exit)
