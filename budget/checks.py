"""Pre-call budget checks from a host app.

A call's applicable policies and their spend come from the enforcer as a snapshot, cached
for ``cache_ttl`` seconds and dropped as soon as any policy event is published. When none
of them is BLOCK or THROTTLE the answer is computed here from the snapshot, in
microseconds. Otherwise the enforcer decides and reserves the estimate, over NATS
request/reply. If the enforcer cannot be asked, the answer is a refusal (unless
``fail_open``) that says why.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

from nats.aio.client import Client
from pydantic import BaseModel

from budget.config import Settings
from budget.enforcement import assess, decide
from budget.policies import PolicyWindow
from budget.pricing import Priced, PricingRegistry
from budget.rpc import RpcFailure, ask
from events import LimitAction, Usage, utc_now
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

__all__ = ["BudgetChecker", "BudgetExceeded"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
_CacheKey = tuple[str, str | None, str | None, str | None]


class BudgetExceeded(Exception):
    """A pre-call check refused the call; ``result`` has the policies and ``retry_after``."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(result.reason)
        self.result = result


@dataclass(frozen=True, slots=True)
class _Cached:
    """A snapshot as the local path uses it."""

    fetched: float
    windows: list[tuple[PolicyWindow, Decimal]]
    enforced: bool
    rolls_over: datetime | None


class BudgetChecker:
    def __init__(self, settings: Settings, registry: PricingRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.nc: Client | None = None
        self._snapshots: dict[_CacheKey, _Cached] = {}
        self._estimates: dict[tuple[str, str | None, int, int], Decimal | None] = {}

    async def use(self, nc: Client) -> None:
        """Ask over ``nc`` from now on, and drop cached snapshots whenever a policy changes."""
        self.nc = nc
        self.forget()
        await nc.subscribe(
            self.settings.topology.event_subject("policy.>"), cb=self._on_policy_event
        )

    async def _on_policy_event(self, _: object) -> None:
        self.forget()

    def forget(self) -> None:
        """Drop every cached snapshot: the next check asks the enforcer afresh."""
        self._snapshots.clear()

    def estimate(self, model: str, provider: str | None, estimated_tokens: int) -> Decimal | None:
        """Price ``estimated_tokens`` as output, the dearer class: an estimate that errs
        high keeps a hard limit hard. None: the model has no price. Kept for the hour (a
        check is on the hot path; prices change by the day, a few by the time of day)."""
        now = utc_now()
        key = (model, provider, estimated_tokens, now.toordinal() * 24 + now.hour)
        if key not in self._estimates:
            if len(self._estimates) >= 10_000:
                self._estimates.clear()
            usage = Usage(output_text=estimated_tokens)
            priced = self.registry.price(provider=provider, model=model, usage=usage, at=now)
            self._estimates[key] = priced.cost if isinstance(priced, Priced) else None
        return self._estimates[key]

    async def check(
        self,
        call: CallAttributes,
        estimated_tokens: int = 0,
        estimated_cost: Decimal | None = None,
        *,
        reserve: bool = True,
    ) -> CheckResult:
        estimate = estimated_cost
        if estimate is None:
            estimate = self.estimate(call.model, call.provider, estimated_tokens)
        try:
            snapshot = await self._snapshot(call)
        except RpcFailure as exc:
            return self._unreachable(str(exc), estimate or Decimal(0))
        now = utc_now()
        if snapshot.enforced:
            if estimate is None:
                return _refuse(
                    f"model {call.model!r} has no price, so the cost of this call cannot be"
                    " checked against BLOCK/THROTTLE policies; pass estimated_cost",
                    Decimal(0),
                )
            request = CheckRequest(**call.model_dump(), estimated_cost=estimate, reserve=reserve)
            try:
                return await self._ask(RPC_CHECK, request, CheckResult)
            except RpcFailure as exc:
                return self._unreachable(str(exc), estimate)
        if snapshot.rolls_over is not None and now >= snapshot.rolls_over:
            self._snapshots.pop(_key(call), None)  # a period ended since the snapshot
            return await self.check(call, estimated_tokens, estimate, reserve=reserve)
        counted = estimate or Decimal(0)
        statuses = [assess(w, spent, counted, now) for w, spent in snapshot.windows]
        result = decide(statuses, counted, enforced=False)
        if estimate is None and statuses:
            note = f"; model {call.model!r} has no price, so this call's cost is not counted"
            return result.model_copy(update={"reason": result.reason + note})
        return result

    async def release(self, reservation_id: str) -> None:
        """Give a reservation back now (the call failed); it would expire anyway, so a
        failure to reach the enforcer is only logged."""
        try:
            await self.release_reporting(reservation_id)
        except RpcFailure as exc:
            log.warning("could not release reservation %s (%s); it expires", reservation_id, exc)

    async def release_reporting(self, reservation_id: str) -> int:
        """``release``, telling how many holds were dropped (0: already settled, released
        or expired) and raising ``RpcFailure`` when the enforcer does not answer."""
        request = ReleaseRequest(reservation_id=reservation_id)
        return (await self._ask(RPC_RELEASE, request, ReleaseResult)).released

    async def _snapshot(self, call: CallAttributes) -> _Cached:
        key = _key(call)
        cached = self._snapshots.get(key)
        if cached is not None and time.monotonic() - cached.fetched < self.settings.cache_ttl:
            return cached
        snapshot = await self._ask(RPC_SNAPSHOT, call, Snapshot)
        windows = [
            (PolicyWindow(w.policy, w.key, w.window_start, w.window_end), w.spent)
            for w in snapshot.windows
        ]
        cached = _Cached(
            fetched=time.monotonic(),
            windows=windows,
            enforced=any(w.policy.action.enforced for w, _ in windows),
            rolls_over=min((w.end for w, _ in windows), default=None),
        )
        self._snapshots[key] = cached
        return cached

    async def _ask(self, name: str, request: BaseModel, answer: type[M]) -> M:
        subject = self.settings.topology.rpc_subject(name)
        return await ask(self.nc, subject, request, answer, within=self.settings.enforcer_timeout)

    def _unreachable(self, why: str, estimate: Decimal) -> CheckResult:
        if self.settings.fail_open:
            return CheckResult(
                allowed=True,
                action=None,
                reason=f"enforcer unavailable ({why}); allowed because fail_open is set",
                estimated_cost=estimate,
            )
        return _refuse(
            f"enforcer unavailable ({why}): BLOCK/THROTTLE policies fail closed; start"
            " `budget enforcer` (or `budget up`), or set budget.fail_open: true to allow",
            estimate,
        )


def _refuse(reason: str, estimate: Decimal) -> CheckResult:
    return CheckResult(
        allowed=False, action=LimitAction.BLOCK, reason=reason, estimated_cost=estimate
    )


def _key(call: CallAttributes) -> _CacheKey:
    return call.model, call.provider, call.user_id, call.project_id
