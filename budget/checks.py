"""Pre-call budget checks from a host app.

A call's applicable policies and their spend come from the enforcer as a snapshot, cached
for ``cache_ttl`` seconds and trusted only while it covers the policy log's end
(``budget.policy_log``): a policy set anywhere binds every tracker once ``set_policy``
returns. When none of the snapshot's policies is BLOCK or THROTTLE the answer is computed
here, in microseconds. Otherwise the enforcer decides and reserves the estimate, over NATS
request/reply. If the enforcer cannot be asked, the last snapshot decides: allowed if it
shows no BLOCK/THROTTLE policy for the call, else (or knowing nothing) refused unless
``fail_open``, saying which. So too when the enforcer throttles this caller for longer
than ``enforcer_timeout`` (``budget.rpc.Throttled``), but ``fail_open`` never applies
then: the enforcer is up and has said to slow down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

from nats.aio.client import Client
from pydantic import BaseModel

from budget.config import Settings
from budget.enforcement import assess, decide, past_limit
from budget.periods import quarter_hour_number
from budget.policies import PolicyWindow, canonical_key
from budget.policy_log import PolicyLog
from budget.pricing import Priced, PricingRegistry
from budget.rpc import (
    LateAnswers,
    Refused,
    RetryTimes,
    RpcFailure,
    ServiceUnavailable,
    Throttled,
    Unanswered,
    ask,
)
from events import BudgetScope, LimitAction, Usage, utc_now
from events.rpc import (
    RPC_CHECK,
    RPC_RELEASE,
    RPC_SNAPSHOT,
    CallAttributes,
    CheckRequest,
    CheckResult,
    ReleaseRequest,
    ReleaseResult,
    Snapshot,
)
from events.usage import exact_money

__all__ = [
    "BudgetCheckFailed",
    "BudgetChecker",
    "BudgetExceeded",
    "answer_or_release",
    "answer_or_release_sync",
]

log = logging.getLogger(__name__)
_CLOCK_LOG_EVERY = 60.0
"""Seconds between two errors about this host's clock."""
_CLOCK_SLACK = 1.0
"""Seconds of the snapshot's way back (and of queues) not taken for a clock ahead."""

M = TypeVar("M", bound=BaseModel)
_CacheKey = tuple[str, str | None, str | None, str | None]


class BudgetExceeded(Exception):
    """A pre-call check refused the call; ``result`` has the policies and ``retry_after``."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(result.reason)
        self.result = result

    @staticmethod
    def of(result: CheckResult) -> BudgetExceeded:
        """The exception for a refusal: ``BudgetCheckFailed`` when no policy decided it."""
        return BudgetExceeded(result) if result.enforced else BudgetCheckFailed(result)


class BudgetCheckFailed(BudgetExceeded):
    """The call was refused because it could not be checked (the enforcer unreachable,
    a model without a price under a BLOCK policy), not because a budget was exceeded; the
    reason says which. A ``BudgetExceeded``, so handlers of refusals keep working."""


async def answer_or_release(
    checking: asyncio.Future[CheckResult], release: Callable[[str], object]
) -> CheckResult:
    """``checking``'s answer. Cancelled while it is on its way (a client gone, a timeout
    around the call), the caller never makes its call: the reservation the answer makes
    is given to ``release`` once it arrives, not held against the budget till it expires."""
    try:
        return await asyncio.shield(checking)
    except asyncio.CancelledError:
        checking.add_done_callback(functools.partial(_release_reserved, release))
        raise


def answer_or_release_sync(
    checking: concurrent.futures.Future[CheckResult], release: Callable[[str], object]
) -> CheckResult:
    """``answer_or_release`` for a thread waiting on another's loop: interrupted while the
    answer is on its way (a script's Ctrl-C), the caller never makes its call either."""
    try:
        return checking.result()
    except BaseException:
        # Its own failure (done already) has nothing to release: _release_reserved sees so.
        checking.add_done_callback(functools.partial(_release_reserved, release))
        raise


def _release_reserved(
    release: Callable[[str], object],
    checking: asyncio.Future[CheckResult] | concurrent.futures.Future[CheckResult],
) -> None:
    if checking.cancelled() or checking.exception() is not None:
        return
    reservation_id = checking.result().reservation_id
    if reservation_id is not None:
        release(reservation_id)


@dataclass(frozen=True, slots=True)
class _Cached:
    """A snapshot as the local path uses it."""

    fetched: float
    windows: list[tuple[PolicyWindow, Decimal]]
    enforced: bool
    rolls_over: datetime | None
    policies_position: int
    as_of: datetime

    def current(self, ttl: float) -> bool:
        """Young enough, and no period has ended since (the spend would be another's)."""
        young = time.monotonic() - self.fetched < ttl
        return young and (self.rolls_over is None or utc_now() < self.rolls_over)


class BudgetChecker:
    def __init__(self, settings: Settings, registry: PricingRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.nc: Client | None = None
        self._snapshots: dict[_CacheKey, _Cached] = {}
        self._estimates: dict[tuple[str, str | None, int, int], Decimal | None] = {}
        self.policy_log = PolicyLog(settings.topology, timeout=settings.enforcer_timeout)
        self._unenforced_at: int | None = None
        """The policy log position at which a snapshot last said no live policy, for any
        call, is BLOCK or THROTTLE (None: not known so)."""
        self._degraded = False
        self._logged_past_limit: set[tuple[str, datetime, _CacheKey]] = set()
        self._retry_times = RetryTimes()
        self._clock_logged = -_CLOCK_LOG_EVERY
        self._releasing: set[asyncio.Task[None]] = set()
        """Releases of reservations whose check was cancelled (``answer_or_release``) or
        whose answer came after the check stopped waiting (``_late_answers``)."""
        self._late_answers = LateAnswers()

    async def use(self, nc: Client) -> None:
        """Ask over ``nc`` from now on."""
        self.nc = nc
        self.policy_log.use(nc)

    def close(self) -> None:
        """Stop the policy log read in flight, if any."""
        self.policy_log.close()

    def estimate(self, model: str, provider: str | None, estimated_tokens: int) -> Decimal | None:
        """Price ``estimated_tokens`` as output, the dearer class: an estimate that errs
        high keeps a hard limit hard; a model with no output (embeddings) as its input.
        None: the model has no price. Kept for the quarter hour (a check is on the hot
        path; prices change by the day, a few by the time of day, on the half hour)."""
        now = utc_now()
        key = (model, provider, estimated_tokens, quarter_hour_number(now))
        if key not in self._estimates:
            if len(self._estimates) >= 10_000:
                self._estimates.clear()
            priced = self.registry.price(
                provider=provider, model=model, usage=Usage(output_text=estimated_tokens), at=now
            )
            if not isinstance(priced, Priced) and estimated_tokens:
                as_input = Usage(embedding_tokens=estimated_tokens)
                priced = self.registry.price(provider=provider, model=model, usage=as_input, at=now)
            # nothing is 0, not the price's scale (0E-8), wherever the estimate is shown
            cost = priced.cost if isinstance(priced, Priced) else None
            self._estimates[key] = Decimal(0) if cost is not None and not cost else cost
        return self._estimates[key]

    def _no_price(self, call: CallAttributes) -> str:
        """Says the call's model has no price, naming its provider first when that looks
        misspelt (the model may well be priced under the provider meant)."""
        note = self.registry.unknown_provider_note(call.provider)
        return f"{note}model {call.model!r} has no price"

    async def check(
        self,
        call: CallAttributes,
        estimated_tokens: int = 0,
        estimated_cost: Decimal | None = None,
        *,
        reserve: bool = True,
        caller: str | None = None,
        ttl_seconds: float | None = None,
    ) -> CheckResult:
        """``caller``: the caller token the enforcer judges and reserves for (default this
        process's own, ``settings.caller``); ``ttl_seconds``: how long a hold lives unless
        settled (the enforcer's ``reservation_ttl`` when None, at most its
        ``reservation_ttl_max``)."""
        result = await self._answer(
            call, estimated_tokens, estimated_cost, reserve, caller, ttl_seconds
        )
        if result.allowed and result.decided_by:
            for status in result.policies:
                if status.state == "exceeded" and not status.action.enforced:
                    at = (status.policy_id, status.window_start, _key(call))
                    self._log_past_limit(
                        at,
                        status.action,
                        status.name,
                        status.limit_amount,
                        status.spend,
                        result.estimated_cost,
                    )
        return result

    def admits_if_cached(
        self,
        *,
        model: str,
        provider: str | None,
        user_id: str | None,
        project_id: str | None,
        estimated_tokens: int = 0,
        estimated_cost: Decimal | None = None,
    ) -> bool:
        """True when the caches answer at once that the call may go ahead with nothing
        reserved: a current snapshot with no
        BLOCK/THROTTLE policy, the policy log's end read recently enough. ``check`` would
        allow it too, and what it logs past a WARN/NOTIFY limit is logged the same, but
        no ``CheckResult`` is built: an instrumented call needs none. False: await
        ``check``. Callable from any thread: it only reads the caches."""
        key = _scope_key(model, provider, user_id, project_id)
        cached = self._snapshots.get(key)
        if cached is None or cached.enforced or not cached.current(self.settings.cache_ttl):
            return False
        end = self.policy_log.end_if_fresh()
        if end is None or cached.policies_position < end:
            return False
        estimate = estimated_cost
        if estimate is None:
            estimate = self.estimate(model, provider, estimated_tokens)
        counted = estimate or Decimal(0)
        with exact_money():
            for window, spent in cached.windows:
                policy = window.policy
                if past_limit(spent, counted, policy.limit_amount):
                    at = (policy.policy_id, window.start, key)
                    self._log_past_limit(
                        at, policy.action, policy.name, policy.limit_amount, spent, counted
                    )
        return True

    def _log_past_limit(
        self,
        at: tuple[str, datetime, _CacheKey],
        action: LimitAction,
        name: str,
        limit: Decimal,
        spend: Decimal,
        estimate: Decimal,
    ) -> None:
        """What WARN (and NOTIFY) do besides telling the caller: a warning in the log,
        once per policy, period and call scope (``at``)."""
        if at in self._logged_past_limit:
            return
        if len(self._logged_past_limit) >= 10_000:
            self._logged_past_limit.clear()
        self._logged_past_limit.add(at)
        log.warning(
            "%s policy %r: %s its limit of %s USD for the period from %s (spend %s"
            " before this call of ~%s); allowed",
            action.value.upper(),
            name,
            "it had already reached" if spend >= limit else "this call takes it past",
            limit,
            f"{at[1]:%Y-%m-%d %H:%M} UTC",
            spend,
            estimate,
        )

    async def _answer(
        self,
        call: CallAttributes,
        estimated_tokens: int,
        estimated_cost: Decimal | None,
        reserve: bool,
        caller: str | None,
        ttl_seconds: float | None,
    ) -> CheckResult:
        estimate = estimated_cost
        if estimate is None:
            estimate = self.estimate(call.model, call.provider, estimated_tokens)
        try:
            snapshot = await self._snapshot(call, enforcer_decides=estimate is not None)
        except Refused as exc:
            return _refuse(_not_judged(exc), estimate or Decimal(0))
        except _Unavailable as exc:
            return await self._unreachable(call, str(exc), estimate, answered=exc.answered)
        except Throttled as exc:
            return await self._unreachable(call, _throttled(exc), estimate, throttled=True)
        now = utc_now()
        if snapshot.enforced:
            if estimate is None:
                return _refuse(
                    f"{self._no_price(call)}, so the cost of this call cannot be"
                    " checked against BLOCK/THROTTLE policies; pass estimated_cost",
                    Decimal(0),
                )
            request = CheckRequest(
                **call.model_dump(),
                estimated_cost=estimate,
                reserve=reserve,
                ttl_seconds=ttl_seconds,
            )
            asking = asyncio.ensure_future(
                self._ask(
                    RPC_CHECK,
                    request,
                    CheckResult,
                    caller=caller,
                    on_late=functools.partial(self._release_late_answer, caller),
                )
            )
            try:
                release = functools.partial(self._release_later, caller=caller)
                answer = await answer_or_release(asking, release)
            except Refused as exc:
                return _refuse(_not_judged(exc), estimate)
            except Throttled as exc:
                return await self._unreachable(call, _throttled(exc), estimate, throttled=True)
            except RpcFailure as exc:
                return await self._unreachable(
                    call,
                    f"enforcer unavailable ({exc})",
                    estimate,
                    answered=_answered(exc),
                )
            self._degraded = False
            return answer
        return self._judge_locally(call, snapshot, estimate, now)

    def _judge_locally(
        self, call: CallAttributes, snapshot: _Cached, estimate: Decimal | None, now: datetime
    ) -> CheckResult:
        counted = estimate or Decimal(0)
        statuses = [assess(w, spent, counted, now) for w, spent in snapshot.windows]
        result = decide(statuses, counted, enforced=False)
        if estimate is None:  # never a silent $0, policies or not
            note = f"; {self._no_price(call)}, so this call's cost is not counted"
            return result.model_copy(update={"reason": result.reason + note})
        return result

    async def release(self, reservation_id: str, *, caller: str | None = None) -> None:
        """Give a reservation back now (the call failed); it would expire anyway, so a
        failure to reach the enforcer is only logged. ``caller``: the check's."""
        try:
            await self.release_reporting(reservation_id, caller=caller)
        except RpcFailure as exc:
            log.warning("could not release reservation %s (%s); it expires", reservation_id, exc)

    def _release_later(self, reservation_id: str, *, caller: str | None = None) -> None:
        """``release`` in a task of its own (from a callback of the loop)."""
        task = asyncio.get_running_loop().create_task(self.release(reservation_id, caller=caller))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    def _release_late_answer(self, caller: str | None, answer: bytes) -> None:
        """What a check's answer reserved, arrived after the check stopped waiting (it
        answered the call as if the enforcer were down): nobody else would release it."""
        try:
            reservation_id = CheckResult.model_validate_json(answer).reservation_id
        except ValueError:  # an RpcError: nothing reserved
            return
        if reservation_id is not None:
            log.info("a check's answer came too late; releasing its reservation %s", reservation_id)
            self._release_later(reservation_id, caller=caller)

    async def release_reporting(self, reservation_id: str, *, caller: str | None = None) -> int:
        """``release``, telling how many holds were dropped (0: already settled, released
        or expired) and raising ``RpcFailure`` when the enforcer does not answer
        (``Refused`` when ``caller``, default this process's own, did not reserve them)."""
        request = ReleaseRequest(reservation_id=reservation_id)
        return (await self._ask(RPC_RELEASE, request, ReleaseResult, caller=caller)).released

    async def _snapshot(self, call: CallAttributes, *, enforcer_decides: bool) -> _Cached:
        """The cached snapshot while it is young and covers the policy log's end, else a
        new one (also when the log cannot be read: a policy may have changed);
        ``_Unavailable`` when the enforcer does not give one. ``enforcer_decides``: the
        call has an estimate, so a snapshot with a BLOCK/THROTTLE policy only sends it
        to the enforcer."""
        key = _key(call)
        cached = self._snapshots.get(key)
        unreadable = None
        if cached is not None and cached.current(self.settings.cache_ttl):
            if cached.enforced and enforcer_decides:
                # No log read needed: the enforcer judges the call under its current
                # policies (a BLOCK policy deleted or added since included) and uses
                # nothing of this snapshot; without the enforcer, ``_unreachable`` reads
                # the log itself. Not without an estimate: the refusal for a model
                # without a price rests on this snapshot's BLOCK/THROTTLE policy.
                return cached
            try:
                if cached.policies_position >= await self.policy_log.end():
                    return cached
            except Unanswered as exc:
                unreadable = f"policy log unreadable ({exc}) and "
        try:
            snapshot = await self._ask(RPC_SNAPSHOT, call, Snapshot)
        except (Throttled, Refused):
            raise
        except RpcFailure as exc:
            situation = f"{unreadable or ''}enforcer unavailable ({exc})"
            raise _Unavailable(situation, answered=_answered(exc)) from None
        self._degraded = False
        self._compare_clocks(snapshot.as_of)
        windows = [
            (PolicyWindow(w.policy, w.key, w.window_start, w.window_end), w.spent)
            for w in snapshot.windows
        ]
        cached = _Cached(
            fetched=time.monotonic(),
            windows=windows,
            enforced=any(w.policy.action.enforced for w, _ in windows),
            rolls_over=min(
                [w.end for w, _ in windows]
                + ([snapshot.changes_at] if snapshot.changes_at else []),
                default=None,
            ),
            policies_position=snapshot.policies_position,
            as_of=snapshot.as_of,
        )
        if len(self._snapshots) >= 100_000:
            self._snapshots.clear()
        self._snapshots[key] = cached
        if not snapshot.enforced_anywhere:
            self._unenforced_at = snapshot.policies_position
        elif self._unenforced_at is not None and self._unenforced_at <= cached.policies_position:
            self._unenforced_at = None
        return cached

    async def _ask(
        self,
        name: str,
        request: BaseModel,
        answer: type[M],
        *,
        caller: str | None = None,
        on_late: Callable[[bytes], object] | None = None,
    ) -> M:
        """``on_late``: given the answer if it arrives after this stopped waiting."""
        subject = self.settings.topology.rpc_subject(name, caller=caller or self.settings.caller)
        return await ask(
            self.nc,
            subject,
            request,
            answer,
            within=self.settings.enforcer_timeout,
            retry_times=self._retry_times,
            late_answers=self._late_answers if on_late is not None else None,
            on_late=on_late,
        )

    def _compare_clocks(self, enforcers_now: datetime) -> None:
        """Log an error (at most once a minute) when this host's clock runs further ahead
        of the enforcer's than ``max_clock_skew``: the projections judge a usage event's
        time by when NATS stored it, so they dead-letter what this host records, and
        its own check of the time, by the same clock, cannot see it."""
        ahead = (utc_now() - enforcers_now).total_seconds()
        if ahead <= self.settings.max_clock_skew + _CLOCK_SLACK:
            return
        if time.monotonic() - self._clock_logged < _CLOCK_LOG_EVERY:
            return
        self._clock_logged = time.monotonic()
        log.error(
            "this host's clock is %.0f s ahead of the budget enforcer's, more than"
            " max_clock_skew (%.0f s): the usage it records is dead-lettered, not counted;"
            " set this host's clock right (NTP)",
            ahead,
            self.settings.max_clock_skew,
        )

    async def _unreachable(
        self,
        call: CallAttributes,
        situation: str,
        estimate: Decimal | None,
        *,
        throttled: bool = False,
        answered: bool = False,
    ) -> CheckResult:
        """The answer without the enforcer (``situation`` says what failed, and why): the
        last snapshot decides, if it is as new as the policy log's end (read now: a
        policy set while the enforcer is down binds too; the end as last read only if
        the log cannot be read either). ``throttled``: the enforcer is up but refuses this
        caller for now, so ``fail_open`` does not apply (a flood would otherwise open every
        BLOCK policy). ``answered``: the enforcer runs and said why it cannot decide (its
        database unavailable, say): starting it is no remedy."""
        counted = estimate or Decimal(0)
        remedy = _SLOW_DOWN if throttled else _CANNOT_DECIDE if answered else _REMEDY
        if self.settings.fail_open and not throttled:
            return CheckResult(
                allowed=True,
                action=None,
                reason=f"{situation}; allowed because fail_open is set",
                estimated_cost=counted,
            )
        try:
            known = await self.policy_log.end()
        except Unanswered:
            known = self.policy_log.known
        last = self._snapshots.get(_key(call))
        if last is not None and last.policies_position < known:
            last = None  # a policy changed since: it may be a BLOCK one
        if last is not None and last.enforced:
            names = ", ".join(
                f"{w.policy.name!r} ({w.policy.action.value})"
                for w, _ in last.windows
                if w.policy.action.enforced
            )
            return _refuse(
                f"{situation}: policy {names} applies to this call and"
                " cannot be checked without it, so the call is refused (fail closed);"
                f" {remedy}",
                counted,
            )
        unenforced = last is not None or (
            self._unenforced_at is not None and self._unenforced_at >= known
        )
        if not unenforced:
            return _refuse(
                f"{situation}, and nothing is known about the policies of this call (no"
                " snapshot since the last policy change), so the call is"
                f" refused (fail closed); {remedy}",
                counted,
            )
        if not self._degraded:
            self._degraded = True
            log.warning(
                "%s; allowing the calls that the last policy snapshots show no BLOCK or"
                " THROTTLE policy for",
                situation,
            )
        if last is None:
            result = decide([], counted, enforced=False)
            shown = "no live policy is BLOCK or THROTTLE"
        else:
            shown = f"policies as of {last.as_of:%Y-%m-%d %H:%M:%S} UTC"
            shown += ": no BLOCK or THROTTLE policy applies to this call"
            if last.current(ttl=float("inf")):
                result = self._judge_locally(call, last, estimate, utc_now())
            else:  # its period has ended: the spend it holds is the last period's
                result = decide([], counted, enforced=False)
        reason = f"{situation}; {result.reason}; {shown}"
        return result.model_copy(update={"reason": reason})


def _answered(exc: RpcFailure) -> bool:
    """Whether the enforcer answered the failed question (that it cannot decide now: its
    database unreachable), so it runs; not when nothing answered."""
    return isinstance(exc, ServiceUnavailable) or not isinstance(exc, Unanswered)


class _Unavailable(Exception):
    """No snapshot could be had; the message says what failed (the enforcer, and the
    policy log if it did too) and why. ``answered``: the enforcer answered, with an error."""

    def __init__(self, situation: str, *, answered: bool) -> None:
        super().__init__(situation)
        self.answered = answered


_REMEDY = "start `budget enforcer` (or `budget up`), or set budget.fail_open: true to allow"
_CANNOT_DECIDE = (
    "the enforcer runs but cannot decide (its answer above says why: its database, say);"
    " checks go through again once it can, or set budget.fail_open: true to allow"
)
_SLOW_DOWN = (
    "this host asks more than the enforcer's caller_rate or caller_in_flight allow: ask"
    " less often, or raise them (fail_open does not apply to being throttled)"
)


def _not_judged(exc: Refused) -> str:
    """Why a call the enforcer answered it cannot judge is refused: not an outage, so
    ``fail_open`` does not apply (it would open a BLOCK limit to whatever makes the
    enforcer fail), nor does the last snapshot decide."""
    return (
        f"the enforcer refused to check this call ({exc}), so the call is refused;"
        " fail_open does not apply: the enforcer is up and answered"
    )


def _throttled(exc: Throttled) -> str:
    return f"enforcer throttles this caller ({exc}; longer than enforcer_timeout)"


def _refuse(reason: str, estimate: Decimal) -> CheckResult:
    return CheckResult(
        allowed=False, action=LimitAction.BLOCK, reason=reason, estimated_cost=estimate
    )


def _key(call: CallAttributes) -> _CacheKey:
    return _scope_key(call.model, call.provider, call.user_id, call.project_id)


def _scope_key(
    model: str, provider: str | None, user_id: str | None, project_id: str | None
) -> _CacheKey:
    """A call's scope in the caches: its model and provider keyed as their policies match
    them (``canonical_key``: "GPT-4o" of "OpenAI" is "gpt-4o" of "openai"), so that any
    spelling finds one snapshot."""
    model_key = canonical_key(BudgetScope.MODEL, model)
    provider_key = None if provider is None else canonical_key(BudgetScope.PROVIDER, provider)
    return model_key, provider_key, user_id, project_id
