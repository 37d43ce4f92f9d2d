"""``BudgetManager``: policies, usage, checks and spend in one place (seed API).

Policy changes are events: ``set_policy`` publishes ``PolicySet`` and returns once the
policies projection has applied it and every tracker's next check is bound to see it
(``budget.policy_log``), so a ``get_policy`` or a check anywhere right after sees the change.
Reads go to the query service over NATS (``budget.queries``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from budget.commands import ChangeClient
from budget.config import Settings
from budget.loop_locks import LoopLock
from budget.periods import Period
from budget.policies import settable_policy
from budget.policy_log import POLICY_NEWS_WITHIN
from budget.queries import question
from budget.recorded import notify_recorded
from budget.tracker import get_usage_tracker
from events import (
    BudgetPeriod,
    BudgetPolicy,
    BudgetScope,
    PolicyDeleted,
    PolicySet,
    UsageRecorded,
    utc_now,
)
from events.queries import SpendQuery, SpendRow
from events.rpc import CheckResult

__all__ = ["BudgetManager", "get_budget_manager"]


class BudgetManager(ChangeClient):
    projection = "policies"
    settle = POLICY_NEWS_WITHIN  # every tracker has read the policy log's end since

    # -- policies ----------------------------------------------------------------------------

    async def set_policy(self, policy: BudgetPolicy, *, set_by: str | None = None) -> BudgetPolicy:
        """Create or replace (same ``policy_id``) a policy; the policy as set (a provider
        policy's key canonical). ``PolicyFieldError`` when it may not be set
        (``settable_policy``)."""
        policy = settable_policy(_policy(policy))
        await self._publish_and_wait(PolicySet(occurred_at=utc_now(), policy=policy, set_by=set_by))
        return policy

    async def create_policy(self, policy: BudgetPolicy, *, set_by: str | None = None) -> bool:
        """Create a policy; False if one with its ``policy_id`` exists. Of concurrent
        creations of one id, exactly one succeeds. ``PolicyFieldError`` as for ``set_policy``."""
        policy = _policy(policy)
        event = PolicySet(occurred_at=utc_now(), policy=settable_policy(policy), set_by=set_by)

        async def exists() -> bool:
            return await self.get_policy(policy.policy_id) is not None

        return await self._publish_new(event, exists)

    async def delete_policy(self, policy_id: str, *, deleted_by: str | None = None) -> bool:
        """Delete a policy; False if there was none with this id."""
        if await self.get_policy(policy_id) is None:
            return False
        event = PolicyDeleted(occurred_at=utc_now(), policy_id=policy_id, deleted_by=deleted_by)
        await self._publish_and_wait(event)
        return True

    async def get_policy(self, policy_id: str) -> BudgetPolicy | None:
        return next((p for p in await self.get_policies() if p.policy_id == policy_id), None)

    async def get_policies(self, scope: BudgetScope | None = None) -> list[BudgetPolicy]:
        return await self.queries.policies(scope)

    # -- usage and checks --------------------------------------------------------------------

    async def record_usage(
        self, record: UsageRecorded | None = None, **fields: Any
    ) -> UsageRecorded:
        """Publish a ready ``UsageRecorded``, or record one from ``UsageTracker.record_usage``
        keyword arguments, not both."""
        if record is not None and (fields or not isinstance(record, UsageRecorded)):
            raise TypeError(
                "record_usage takes a UsageRecorded (as tracker.record_usage returns it) or"
                " keyword arguments (model=..., provider=..., input_tokens=...), not "
                + ("both" if isinstance(record, UsageRecorded) else type(record).__name__)
            )
        if record is not None:
            notify_recorded(record)  # observers (``budget.otel``) hear of it, as of any
            await self.tracker.publisher.publish(record)
            return record
        return await self.tracker.record_usage(**fields)

    async def check_budget(
        self, model: str, estimated_tokens: int = 0, user_id: str | None = None, **options: Any
    ) -> CheckResult:
        return await self.tracker.check_budget(model, estimated_tokens, user_id, **options)

    async def get_spend_summary(
        self,
        period: BudgetPeriod | Period = BudgetPeriod.MONTHLY,
        scope: BudgetScope | None = None,
        at: datetime | None = None,
    ) -> list[SpendRow]:
        """Totals of the calendar period (UTC) holding ``at`` (now), per scope key, with
        every call this process recorded before: it waits until they are stored
        (``budget.publisher.NotStored`` if some are stored nowhere, as ``flush`` says) and
        the spend projection has applied them (``NotApplied`` after ``apply_timeout``)."""
        if period == BudgetPeriod.CUSTOM:
            raise ValueError("a spend summary is per calendar period: daily, weekly or monthly")
        query = question(SpendQuery, {}, period=Period(str(period)).value, scope=scope, at=at)
        await self.tracker.flush()
        stored = self.tracker.publisher.stored_up_to
        if stored:
            await self.queries.wait_applied("spend", stored, self.apply_timeout)
        return await self.queries.spend(query)


def _policy(policy: object) -> BudgetPolicy:
    """What an AttributeError deep in the checks would say less clearly."""
    if not isinstance(policy, BudgetPolicy):
        raise TypeError(
            "a policy is a BudgetPolicy (budget.models.BudgetPolicy(name=..., limit_amount=...,"
            f" ...)), not {type(policy).__name__}"
        )
    return policy


_manager: BudgetManager | None = None
_lock = LoopLock()


async def get_budget_manager(settings: Settings | None = None) -> BudgetManager:
    """The process's manager, sharing the usage tracker's connection (a new manager for a
    new tracker: ``get_usage_tracker``)."""
    global _manager
    async with _lock():
        tracker = await get_usage_tracker(settings)
        if _manager is None or _manager.tracker is not tracker:
            _manager = BudgetManager(settings or tracker.settings, tracker)
        return _manager
