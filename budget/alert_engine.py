"""``AlertEngine``: alert rules, the alerts raised, acknowledging and resolving (seed API).

Rules, acknowledgements and resolutions are events; each call returns once the alert
evaluator has applied it. Alerts are read from the evaluator's projection.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from budget.alerting import threshold_alert, threshold_amount
from budget.commands import publish_and_wait
from budget.config import Settings, load_settings
from budget.policies import PolicyWindow
from budget.tracker import UsageTracker, get_usage_tracker
from events import (
    Alert,
    AlertAcknowledged,
    AlertResolved,
    AlertRule,
    AlertRuleRemoved,
    AlertRuleSet,
    Event,
    utc_now,
)
from events.rpc import PolicySpend
from projections.alerts import AlertsProjection, load_rules
from projections.base import Connection
from projections.db import connect

__all__ = ["AlertDelivery", "AlertEngine", "StoredAlert", "get_alert_engine"]

T = TypeVar("T")


@dataclass(frozen=True)
class StoredAlert:
    alert: Alert
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    resolved_by: str | None
    resolved_at: datetime | None


@dataclass(frozen=True)
class AlertDelivery:
    channel: str
    status: str
    attempts: int
    last_error: str | None
    sent_at: datetime | None


class AlertEngine:
    def __init__(self, settings: Settings, tracker: UsageTracker, *, apply_timeout: float = 10.0):
        self.settings = settings
        self.tracker = tracker
        self.apply_timeout = apply_timeout

    async def get_rules(self) -> list[AlertRule]:
        """The rules in force: the defaults, as replaced or removed, and the added ones."""
        return await self._read(load_rules)

    async def add_rule(self, rule: AlertRule) -> AlertRule:
        """Add a rule, or replace the one with its ``rule_id`` (defaults included)."""
        await self._publish(AlertRuleSet(occurred_at=utc_now(), rule=rule))
        return rule

    async def remove_rule(self, rule_id: str) -> bool:
        if all(r.rule_id != rule_id for r in await self.get_rules()):
            return False
        await self._publish(AlertRuleRemoved(occurred_at=utc_now(), rule_id=rule_id))
        return True

    async def evaluate_thresholds(self, spend_summary: Iterable[PolicySpend]) -> list[Alert]:
        """The threshold alerts the rules would raise for these policy windows now (what
        the evaluator raises as spend arrives; this neither stores nor sends anything)."""
        rules = [r for r in await self.get_rules() if r.alert_type.is_threshold]
        alerts = []
        for spend in spend_summary:
            policy = spend.policy
            for rule in rules:
                if not rule.watches(policy.policy_id, policy.scope):
                    continue
                percent, amount = threshold_amount(rule, policy)
                if spend.spent < amount:
                    continue
                window = PolicyWindow(policy, spend.key, spend.window_start, spend.window_end)
                alerts.append(threshold_alert(rule, window, percent, spend.spent, utc_now()))
        return alerts

    async def get_active_alerts(
        self, policy_id: str | None = None, unacknowledged_only: bool = False
    ) -> list[StoredAlert]:
        """Unresolved alerts, oldest first."""
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
        async def query(conn: Connection) -> list[StoredAlert]:
            cursor = await conn.execute(
                "SELECT alert, acknowledged_by, acknowledged_at, resolved_by, resolved_at"
                " FROM alerts WHERE (%s::text IS NULL OR policy_id = %s)"
                " AND (NOT %s OR acknowledged_at IS NULL)"
                " AND (%s::boolean IS NULL OR (resolved_at IS NOT NULL) = %s)"
                " ORDER BY raised_at, stream_seq,"
                " (alert ->> 'threshold_percent')::numeric NULLS FIRST, alert_id LIMIT %s",
                (policy_id, policy_id, unacknowledged_only, resolved, resolved, limit),
            )
            return [
                StoredAlert(Alert.model_validate(row[0]), *row[1:])
                for row in await cursor.fetchall()
            ]

        return await self._read(query)

    async def get_alert(self, alert_id: uuid.UUID) -> StoredAlert | None:
        return next((a for a in await self.list_alerts() if a.alert.alert_id == alert_id), None)

    async def deliveries(self, alert_id: uuid.UUID) -> list[AlertDelivery]:
        """Where the alert was sent, or why not yet."""

        async def query(conn: Connection) -> list[AlertDelivery]:
            cursor = await conn.execute(
                "SELECT channel, status, attempts, last_error, sent_at FROM alert_outbox"
                " WHERE alert_id = %s ORDER BY channel",
                (alert_id,),
            )
            return [AlertDelivery(*row) for row in await cursor.fetchall()]

        return await self._read(query)

    async def acknowledge_alert(self, alert_id: uuid.UUID, acknowledged_by: str) -> None:
        await self._publish(
            AlertAcknowledged(
                occurred_at=utc_now(), alert_id=alert_id, acknowledged_by=acknowledged_by
            )
        )

    async def resolve_alert(self, alert_id: uuid.UUID, resolved_by: str | None = None) -> None:
        await self._publish(
            AlertResolved(occurred_at=utc_now(), alert_id=alert_id, resolved_by=resolved_by)
        )

    async def _publish(self, event: Event) -> None:
        await publish_and_wait(
            self.tracker.publisher.client,
            self.settings,
            event,
            AlertsProjection.name,
            self.apply_timeout,
        )

    async def _read(self, query: Callable[[Connection], Awaitable[T]]) -> T:
        conn = await connect(self.settings.database_url)
        try:
            return await query(conn)
        finally:
            await conn.close()


_engine: AlertEngine | None = None
_lock = asyncio.Lock()


async def get_alert_engine(settings: Settings | None = None) -> AlertEngine:
    """The process's alert engine, sharing the usage tracker's connection."""
    global _engine
    async with _lock:
        if _engine is None:
            settings = settings or load_settings()
            _engine = AlertEngine(settings, await get_usage_tracker(settings))
        return _engine
