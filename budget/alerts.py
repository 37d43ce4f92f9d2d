"""The seed's ``alerts`` module: ``AlertEngine`` (alert rules, the alerts raised,
acknowledging and resolving) and the alert types it takes and returns (``AlertRule``,
``AlertSeverity``, ``AlertType``, ``Alert``).

Rules, acknowledgements and resolutions are events; each call returns once the alert
evaluator has applied it. Rules and alerts are read through the query service over NATS
(``budget.queries``).
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, time

from budget.alerting import reached, threshold_alert, threshold_amount
from budget.commands import ChangeClient
from budget.config import Settings
from budget.loop_locks import LoopLock
from budget.periods import UTC, Period, period_bounds
from budget.policies import PolicyWindow, policy_window
from budget.queries import question
from budget.tracker import get_usage_tracker
from events import (
    Alert,
    AlertAcknowledged,
    AlertResolved,
    AlertRule,
    AlertRuleRemoved,
    AlertRuleSet,
    AlertSeverity,
    AlertType,
    BudgetPolicy,
    utc_now,
)
from events.queries import AlertDelivery, AlertsQuery, SpendRow, StoredAlert
from events.rpc import PolicySpend

__all__ = [
    "Alert",
    "AlertDelivery",
    "AlertEngine",
    "AlertRule",
    "AlertSeverity",
    "AlertType",
    "StoredAlert",
    "get_alert_engine",
]


class AlertEngine(ChangeClient):
    projection = "alerts"

    async def get_rules(self) -> list[AlertRule]:
        """The rules in force: the defaults, as replaced or removed, and the added ones."""
        return await self.queries.rules()

    async def add_rule(self, rule: AlertRule) -> AlertRule:
        """Add a rule, or replace the one with its ``rule_id`` (defaults included).
        ``ValueError`` for a rule part of which would do nothing (``unused_setting``)."""
        _usable(rule)
        await self._publish_and_wait(AlertRuleSet(occurred_at=utc_now(), rule=rule))
        return rule

    async def create_rule(self, rule: AlertRule) -> bool:
        """Add a rule; False if one with its ``rule_id`` is in force. Of concurrent
        creations of one id, exactly one succeeds. ``ValueError`` as ``add_rule``."""
        _usable(rule)

        async def exists() -> bool:
            return any(r.rule_id == rule.rule_id for r in await self.get_rules())

        return await self._publish_new(AlertRuleSet(occurred_at=utc_now(), rule=rule), exists)

    async def remove_rule(self, rule_id: str) -> bool:
        if all(r.rule_id != rule_id for r in await self.get_rules()):
            return False
        await self._publish_and_wait(AlertRuleRemoved(occurred_at=utc_now(), rule_id=rule_id))
        return True

    async def evaluate_thresholds(
        self, spend_summary: Iterable[PolicySpend | SpendRow]
    ) -> list[Alert]:
        """The threshold alerts the rules would raise for these policy windows now (what
        the evaluator raises as spend arrives; this neither stores nor sends anything).

        Takes the enforcer's ``PolicySpend`` windows or ``BudgetManager.get_spend_summary()``
        rows; a row counts for each policy whose window is exactly that row's calendar
        period (so not for a policy in another time zone) and that applies to its key."""
        rows = _spend_rows(spend_summary)
        summary_rows = any(isinstance(r, SpendRow) for r in rows)
        policies = await self.queries.policies(None) if summary_rows else []
        rules = [r for r in await self.get_rules() if r.alert_type.is_threshold]
        alerts = []
        for spend in _policy_windows(rows, policies):
            policy = spend.policy
            for rule in rules:
                if not rule.watches(policy.policy_id, policy.scope, action=policy.action):
                    continue
                _, amount = threshold_amount(rule, policy)
                if not reached(spend.spent, amount):
                    continue
                window = PolicyWindow(policy, spend.key, spend.window_start, spend.window_end)
                alerts.append(threshold_alert(rule, window, spend.spent, utc_now()))
        return alerts

    async def get_active_alerts(
        self, policy_id: str | None = None, unacknowledged_only: bool = False
    ) -> list[StoredAlert]:
        """The newest 1,000 unresolved alerts (``list_alerts`` takes another limit), oldest
        first."""
        return await self.list_alerts(
            policy_id=policy_id, unacknowledged_only=unacknowledged_only, resolved=False
        )

    async def list_alerts(
        self,
        *,
        policy_id: str | None = None,
        unacknowledged_only: bool = False,
        resolved: bool | None = None,
        limit: int = 1000,
    ) -> list[StoredAlert]:
        """The newest ``limit`` (up to 10,000) alerts that match, oldest first."""
        query = question(
            AlertsQuery,
            {},
            policy_id=policy_id,
            unacknowledged_only=unacknowledged_only,
            resolved=resolved,
            limit=limit,
        )
        return await self.queries.alerts(query)

    async def get_alert(self, alert_id: uuid.UUID) -> StoredAlert | None:
        found = await self.queries.alerts(question(AlertsQuery, {}, alert_id=alert_id))
        return found[0] if found else None

    async def deliveries(self, alert_id: uuid.UUID) -> list[AlertDelivery]:
        """Where the alert was sent, or why not yet."""
        return await self.queries.deliveries(alert_id)

    async def acknowledge_alert(self, alert_id: uuid.UUID, acknowledged_by: str) -> bool:
        """Acknowledge an alert; False (nothing stored) if there is none with this id. An
        acknowledged alert keeps its first acknowledgement (who, when): acknowledging it
        again stores nothing (``get_alert`` says who did)."""
        stored = await self.get_alert(alert_id)
        if stored is None:
            return False
        if stored.acknowledged_at is None:
            await self._publish_and_wait(
                AlertAcknowledged(
                    occurred_at=utc_now(), alert_id=alert_id, acknowledged_by=acknowledged_by
                )
            )
        return True

    async def resolve_alert(self, alert_id: uuid.UUID, resolved_by: str | None = None) -> bool:
        """Resolve an alert; False (nothing stored) if there is none with this id. A
        resolved alert keeps its first resolution, as ``acknowledge_alert`` its first
        acknowledgement."""
        stored = await self.get_alert(alert_id)
        if stored is None:
            return False
        if stored.resolved_at is None:
            await self._publish_and_wait(
                AlertResolved(occurred_at=utc_now(), alert_id=alert_id, resolved_by=resolved_by)
            )
        return True


def _usable(rule: AlertRule) -> None:
    if why := rule.unused_setting():
        raise ValueError(f"alert rule {rule.rule_id!r}: {why}")


def _spend_rows(spend_summary: object) -> list[PolicySpend | SpendRow]:
    """``spend_summary``'s rows, or a ``TypeError`` saying what was passed: a summary not
    awaited would fail as "'coroutine' object is not iterable", a foreign row as an
    ``AttributeError`` deep in the evaluation."""
    if inspect.isawaitable(spend_summary):
        if inspect.iscoroutine(spend_summary):
            spend_summary.close()  # never awaited now: no "never awaited" warning besides
        raise _not_rows("an awaitable: await it first")
    if not isinstance(spend_summary, Iterable):
        raise _not_rows(type(spend_summary).__name__)
    rows = list(spend_summary)
    for row in rows:
        if not isinstance(row, PolicySpend | SpendRow):
            raise _not_rows(f"{type(row).__name__} rows")
    return rows


def _not_rows(passed: str) -> TypeError:
    return TypeError(
        "evaluate_thresholds takes SpendRow or PolicySpend rows, as"
        f" `await manager.get_spend_summary()` returns them, not {passed}"
    )


def _policy_windows(
    items: Iterable[PolicySpend | SpendRow], policies: Sequence[BudgetPolicy]
) -> Iterator[PolicySpend]:
    for item in items:
        if isinstance(item, SpendRow):
            yield from _row_windows(item, policies)
        else:
            yield item


def _row_windows(row: SpendRow, policies: Sequence[BudgetPolicy]) -> Iterator[PolicySpend]:
    """The policy windows a spend summary row is the spend of. A policy naming the row's
    key replaces, for that key, its scope's per-key policies (as for checks)."""
    start = datetime.combine(row.period_start, time(), UTC)
    bounds = period_bounds(Period(row.period), start)
    same = [p for p in policies if p.scope.value == row.scope and p.period.value == row.period]
    keyed = [p for p in same if p.scope_key == row.scope_key]
    for policy in keyed or [p for p in same if p.scope_key is None]:
        if policy_window(policy, start) == bounds:
            yield PolicySpend(
                policy=policy,
                key=row.scope_key,
                window_start=bounds[0],
                window_end=bounds[1],
                spent=row.cost,
            )


_engine: AlertEngine | None = None
_lock = LoopLock()


async def get_alert_engine(settings: Settings | None = None) -> AlertEngine:
    """The process's alert engine, sharing the usage tracker's connection (a new engine
    for a new tracker: ``get_usage_tracker``)."""
    global _engine
    async with _lock():
        tracker = await get_usage_tracker(settings)
        if _engine is None or _engine.tracker is not tracker:
            _engine = AlertEngine(settings or tracker.settings, tracker)
        return _engine
