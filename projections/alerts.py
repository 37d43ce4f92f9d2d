"""The alert evaluator: its own consumer, its own spend totals and policy copy, so replaying
the log rebuilds the same alerts.

Per batch, in log order: usage goes into the evaluator's quarter-hour buckets (the spend
projection's code, under ``alert_spend_*``); then every policy window and watched hour the
fresh events touched is checked against the rules. A correction counts by the ledger rule
(``projections/ledger.py``): its difference, at the corrected event's time and scopes.
The event that took a window's spend from below a threshold to it raises the alert, so an
alert's id, time and cause do not depend on where batches happen to split. Cooldowns are
kept in event time. Alerts raised while this version is live go to the outbox (one row per
channel) and wake the notifier; alerts a rebuild re-derives are stored but never sent again,
except those of events the version it replaces never applied: they are queued when the
rebuild goes live.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from budget.alerting import (
    DEFAULT_RULES,
    Spent,
    alert_id,
    anomaly,
    crossing,
    threshold_alert,
    threshold_amount,
)
from budget.policies import CallScope, PolicyWindow, applicable
from events import (
    Alert,
    AlertAcknowledged,
    AlertResolved,
    AlertRule,
    AlertRuleRemoved,
    AlertRuleSet,
    AlertType,
    BudgetPolicy,
    BudgetScope,
    PolicyDeleted,
    PolicySet,
    RequestBlocked,
    UsageRecorded,
    UsageRepriced,
)
from events.policy import GLOBAL_SCOPE_KEY
from projections.change_log import ChangeLog
from projections.engine.fast_codec import FastUsageRecorded
from projections.engine.projection import Applied, Connection, Projection, physical
from projections.ledger import Booked
from projections.policies import PoliciesProjection, load_policies
from projections.spend import SpendProjection
from projections.windows import window_sums

__all__ = ["OUTBOX_CHANNEL", "AlertsProjection", "load_rules"]

OUTBOX_CHANNEL = "alert_outbox"
"""PostgreSQL NOTIFY channel: the notifier wakes when alerts are queued."""

_HISTORY_DAYS = 28
_USAGE = (UsageRecorded, UsageRepriced)


@dataclass(frozen=True, slots=True)
class _Candidate:
    """An alert a rule would raise, before its cooldown is checked."""

    rule: AlertRule
    subject: str
    stream_seq: int
    alert: Alert


@dataclass(frozen=True, slots=True)
class _Counted:
    """A change of spend that counts toward thresholds, in log order: a new usage event's
    cost, or a correction's difference (booked at the corrected event's time and scopes,
    as the ledger recorded them; negative when it lowers the cost)."""

    stream_seq: int
    call: CallScope
    spent: Spent

    @classmethod
    def of_usage(
        cls, stream_seq: int, event: FastUsageRecorded | UsageRecorded, cost: Decimal
    ) -> _Counted:
        return cls(stream_seq, CallScope.of(event), Spent(event.event_id, event.occurred_at, cost))

    @classmethod
    def of_correction(cls, booked: Booked) -> _Counted:
        original = booked.original
        call = CallScope(
            model=original["model"],
            provider=original["provider"],
            user_id=original["user_id"],
            project_id=original["project_id"],
        )
        spent = Spent(booked.event_id, booked.occurred_at, booked.cost_delta)
        return cls(booked.applied.stream_seq, call, spent)


@dataclass
class _Rules:
    position: tuple[object, ...]
    """Where the policy and rule logs stood when these were read (and in which schema)."""
    policies: list[BudgetPolicy] = field(default_factory=list)
    rules: list[AlertRule] = field(default_factory=list)


class AlertsProjection(Projection):
    name: ClassVar[str] = "alerts"
    event_types = (
        UsageRecorded,
        UsageRepriced,
        PolicySet,
        PolicyDeleted,
        RequestBlocked,
        AlertRuleSet,
        AlertRuleRemoved,
        AlertAcknowledged,
        AlertResolved,
    )

    def __init__(self) -> None:
        self.spend = SpendProjection("alert_spend", private_ledger=True, settles_reservations=False)
        self.policies = PoliciesProjection("alert")
        self.rule_log = ChangeLog(table="alert_rule_log", key="rule_id", document="rule")
        self.tables = (
            *self.spend.tables,
            *self.policies.tables,
            self.rule_log.events,
            self.rule_log.table,
            "alerts",
            "alert_cooldowns",
        )
        self._cache: dict[int, _Rules] = {}

    def ddl(self, version: int) -> list[str]:
        alerts, cooldowns = (physical(t, version) for t in self.tables[-2:])
        return [
            *self.spend.ddl(version),
            *self.policies.ddl(version),
            *self.rule_log.ddl(version),
            f"""CREATE TABLE {alerts} (
                alert_id uuid PRIMARY KEY,
                stream_seq bigint NOT NULL,
                raised_at timestamptz NOT NULL,
                alert_type text NOT NULL,
                severity text NOT NULL,
                rule_id text NOT NULL,
                policy_id text,
                alert jsonb NOT NULL,
                acknowledged_by text,
                acknowledged_at timestamptz,
                resolved_by text,
                resolved_at timestamptz)""",
            f"CREATE INDEX ON {alerts} (policy_id, raised_at)",
            f"CREATE INDEX ON {alerts} (raised_at)",
            f"""CREATE TABLE {cooldowns} (
                rule_id text NOT NULL,
                subject text NOT NULL,
                last_raised_at timestamptz NOT NULL,
                PRIMARY KEY (rule_id, subject))""",
        ]

    def views(self, version: int) -> dict[str, str]:
        rules, alerts, _ = (physical(t, version) for t in self.tables[-3:])
        return {
            **self.spend.views(version),
            **self.policies.views(version),
            "alerts": f"SELECT * FROM {alerts}",
            "alert_rule_log": f"SELECT * FROM {rules}",
        }

    async def apply(self, conn: Connection, version: int, batch: Sequence[Applied]) -> None:
        for is_usage, run in itertools.groupby(batch, lambda a: a.event_type in _USAGE):
            segment = list(run)
            if is_usage:
                await self._apply_usage(conn, version, segment)
                continue
            for applied in segment:
                await self._apply_other(conn, version, applied)

    # -- usage: thresholds and anomalies ----------------------------------------------------

    async def _apply_usage(self, conn: Connection, version: int, segment: list[Applied]) -> None:
        fresh = await self._fresh_usage(conn, version, segment)
        booked = await self.spend.book(conn, version, segment)
        counted = sorted(
            [*fresh, *(_Counted.of_correction(b) for b in booked if b.cost_delta)],
            key=lambda c: c.stream_seq,
        )
        if not counted:
            return
        state = await self._state(conn, version)
        candidates = [
            *await self._threshold_candidates(conn, version, state, counted),
            *await self._anomaly_candidates(conn, version, state, counted),
        ]
        await self._raise(conn, version, candidates)

    async def _fresh_usage(
        self, conn: Connection, version: int, segment: list[Applied]
    ) -> list[_Counted]:
        """The segment's priced usage events not counted before (as the spend code sees it)."""
        usage = [(a, a.recorded) for a in segment if a.event_type is UsageRecorded]
        ledger = physical(self.spend.tables[1], version)
        cursor = await conn.execute(
            f"SELECT event_id FROM {ledger} WHERE event_id = ANY(%s)".encode(),
            ([e.event_id for _, e in usage],),
        )
        seen = {row[0] for row in await cursor.fetchall()}
        fresh = []
        for applied, event in usage:
            if event.event_id not in seen:
                seen.add(event.event_id)
                if event.cost is not None:
                    fresh.append(_Counted.of_usage(applied.stream_seq, event, event.cost))
        return fresh

    async def _threshold_candidates(
        self,
        conn: Connection,
        version: int,
        state: _Rules,
        counted: list[_Counted],
    ) -> list[_Candidate]:
        rules = [r for r in state.rules if r.alert_type.is_threshold]
        touched: dict[tuple[str, str, datetime], tuple[PolicyWindow, list[Spent], list[int]]] = {}
        for item in counted:
            for window in applicable(state.policies, item.call, item.spent.occurred_at):
                entry = touched.setdefault(window.ident, (window, [], []))
                entry[1].append(item.spent)
                entry[2].append(item.stream_seq)
        if not rules or not touched:
            return []
        windows = [w for w, _, _ in touched.values()]
        totals = await self._window_totals(conn, version, windows)
        found = []
        for (window, spent, seqs), after in zip(touched.values(), totals, strict=True):
            for rule in rules:
                policy = window.policy
                if not rule.watches(policy.policy_id, policy.scope, action=policy.action):
                    continue
                percent, amount = threshold_amount(rule, window.policy)
                crossed = crossing(after, amount, spent)
                if crossed is not None:
                    hit, total = crossed
                    alert = threshold_alert(
                        rule, window, percent, total, hit.occurred_at, hit.event_id
                    )
                    subject = f"{window.policy.policy_id}|{window.key}"
                    found.append(_Candidate(rule, subject, seqs[spent.index(hit)], alert))
        return found

    async def _anomaly_candidates(
        self,
        conn: Connection,
        version: int,
        state: _Rules,
        counted: list[_Counted],
    ) -> list[_Candidate]:
        rules = [r for r in state.rules if r.alert_type is AlertType.ANOMALY]
        if not rules:
            return []
        scopes = {s for r in rules for s in (r.scopes or tuple(BudgetScope))}
        hours: dict[tuple[str, str, datetime], tuple[list[Spent], list[int]]] = {}
        for item in counted:
            hour = item.spent.occurred_at.replace(minute=0, second=0, microsecond=0)
            for scope in scopes:
                key = item.call.key(scope)
                if key is not None:
                    entry = hours.setdefault((scope.value, key, hour), ([], []))
                    entry[0].append(item.spent)
                    entry[1].append(item.stream_seq)
        history = await self._hour_history(conn, version, list(hours))
        found = []
        for (scope_name, key, hour), (spent, seqs) in hours.items():
            now, past, same_weekday = history[(scope_name, key, hour)]
            limits = anomaly(past, same_weekday)
            if limits is None:
                continue
            crossed = crossing(now, limits.threshold, spent)
            if crossed is None:
                continue
            hit, total = crossed
            scope = BudgetScope(scope_name)
            usual = limits.baseline.quantize(Decimal("0.0001"))
            for rule in rules:
                if rule.scopes is not None and scope not in rule.scopes:
                    continue
                alert = Alert(
                    alert_id=alert_id(rule.rule_id, scope.value, key, hour),
                    alert_type=AlertType.ANOMALY,
                    severity=rule.severity,
                    rule_id=rule.rule_id,
                    rule_name=rule.name,
                    message=(
                        f"{scope.value} {key}: {total} USD spent in the hour from"
                        f" {hour:%Y-%m-%d %H:00} UTC, usually {usual} USD"
                    ),
                    raised_at=hit.occurred_at,
                    caused_by=hit.event_id,
                    scope=scope,
                    scope_key=key,
                    period_start=hour,
                    period_end=hour + timedelta(hours=1),
                    spend=total,
                    baseline=limits.baseline,
                )
                subject = f"{scope.value}|{key}"
                found.append(_Candidate(rule, subject, seqs[spent.index(hit)], alert))
        return found

    async def _hour_history(
        self, conn: Connection, version: int, hours: list[tuple[str, str, datetime]]
    ) -> dict[tuple[str, str, datetime], tuple[Decimal, list[Decimal], list[Decimal]]]:
        """For each (scope, key, hour): its spend so far, the same hour on each earlier day
        since the key's first spend (up to 28 days), and those on the same weekday.

        One scan per total over the hours it needs (a replayed batch spans many hours)."""
        if not hours:
            return {}
        buckets = physical(self.spend.tables[0], version)
        spans: dict[tuple[str, str], list[datetime]] = {}
        for scope, key, hour in hours:
            span = spans.setdefault((scope, key), [hour, hour])
            span[0], span[1] = min(span[0], hour), max(span[1], hour)
        totals = list(spans)
        param = json.dumps(
            [
                {
                    "i": i,
                    "scope": scope,
                    "key": key,
                    "lo": (spans[(scope, key)][0] - timedelta(days=_HISTORY_DAYS)).isoformat(),
                    "hi": (spans[(scope, key)][1] + timedelta(hours=1)).isoformat(),
                }
                for i, (scope, key) in enumerate(totals)
            ]
        )
        window = "jsonb_to_recordset(%s::jsonb) AS w(i int, scope text, key text, lo timestamptz,"
        window += " hi timestamptz)"
        cursor = await conn.execute(
            f"""SELECT w.i, date_trunc('hour', b.bucket_start), sum(b.cost)
            FROM {window} JOIN {buckets} b ON b.scope = w.scope AND b.scope_key = w.key
                 AND b.bucket_start >= w.lo AND b.bucket_start < w.hi
            GROUP BY 1, 2""".encode(),
            (param,),
        )
        # keyed by hours since the epoch: ints hash far faster than aware datetimes
        hourly: dict[int, dict[int, Decimal]] = {}
        for index, hour, total in await cursor.fetchall():
            hourly.setdefault(index, {})[_epoch_hour(hour)] = total
        cursor = await conn.execute(
            f"""SELECT w.i, (SELECT date_trunc('hour', min(b.bucket_start)) FROM {buckets} b
                             WHERE b.scope = w.scope AND b.scope_key = w.key)
            FROM {window}""".encode(),
            (param,),
        )
        since = {i: _epoch_hour(at) for i, at in await cursor.fetchall() if at is not None}
        result = {}
        position = {total: i for i, total in enumerate(totals)}
        zero = Decimal(0)
        for scope, key, hour in hours:
            index = position[(scope, key)]
            sums, now = hourly.get(index, {}), _epoch_hour(hour)
            first = since.get(index, now)
            days = range(1, min(_HISTORY_DAYS, (now - first) // 24) + 1)
            past = [sums.get(now - 24 * day, zero) for day in days]
            weekday = [past[day - 1] for day in days if day % 7 == 0]
            result[(scope, key, hour)] = (sums.get(now, zero), past, weekday)
        return result

    async def _window_totals(
        self, conn: Connection, version: int, windows: list[PolicyWindow]
    ) -> list[Decimal]:
        return await window_sums(conn, physical(self.spend.tables[0], version), windows)

    # -- other events ------------------------------------------------------------------------

    async def _apply_other(self, conn: Connection, version: int, applied: Applied) -> None:
        event = applied.event
        alerts = physical(self.tables[-2], version)
        if isinstance(event, PolicySet | PolicyDeleted):
            await self.policies.apply(conn, version, [applied])
        elif isinstance(event, AlertRuleSet):
            rule = event.rule
            await self.rule_log.record(conn, version, applied, rule.rule_id, rule.model_dump_json())
        elif isinstance(event, AlertRuleRemoved):
            await self.rule_log.record(conn, version, applied, event.rule_id, None)
        elif isinstance(event, RequestBlocked):
            state = await self._state(conn, version)
            await self._raise(conn, version, self._violations(state, applied, event))
        elif isinstance(event, AlertAcknowledged):
            await conn.execute(
                f"UPDATE {alerts} SET acknowledged_by = %s, acknowledged_at = %s"
                " WHERE alert_id = %s AND acknowledged_at IS NULL".encode(),
                (event.acknowledged_by, event.occurred_at, event.alert_id),
            )
        elif isinstance(event, AlertResolved):
            await conn.execute(
                f"UPDATE {alerts} SET resolved_by = %s, resolved_at = %s"
                " WHERE alert_id = %s AND resolved_at IS NULL".encode(),
                (event.resolved_by, event.occurred_at, event.alert_id),
            )

    def _violations(
        self, state: _Rules, applied: Applied, event: RequestBlocked
    ) -> list[_Candidate]:
        policies = {p.policy_id: p for p in state.policies}
        call = CallScope.of(event)
        found = []
        for rule in state.rules:
            if rule.alert_type is not AlertType.POLICY_VIOLATION:
                continue
            for policy_id in event.policy_ids:
                policy = policies.get(policy_id)
                scope, key = _violated(policy, call)
                if not rule.watches(policy_id, scope, action=policy.action if policy else None):
                    continue
                alert = Alert(
                    alert_id=alert_id(rule.rule_id, policy_id, event.event_id),
                    alert_type=AlertType.POLICY_VIOLATION,
                    severity=rule.severity,
                    rule_id=rule.rule_id,
                    rule_name=rule.name,
                    message=f"request for {event.model} refused: {event.reason}",
                    raised_at=event.occurred_at,
                    caused_by=event.event_id,
                    policy_id=policy_id,
                    policy_name=policy.name if policy else None,
                    scope=scope,
                    scope_key=key,
                    spend=event.spend,
                    limit_amount=event.limit_amount,
                )
                subject = f"{policy_id}|{key}"
                found.append(_Candidate(rule, subject, applied.stream_seq, alert))
        return found

    # -- raising -----------------------------------------------------------------------------

    async def _raise(self, conn: Connection, version: int, candidates: list[_Candidate]) -> None:
        """Store the candidates that their rule's cooldown lets through, in log order; queue
        each new one for its channels while this version is live."""
        if not candidates:
            return
        _, alerts, cooldowns = (physical(t, version) for t in self.tables[-3:])
        # log order; several thresholds crossed by one event in rising order
        candidates.sort(
            key=lambda c: (
                c.stream_seq,
                c.alert.threshold_percent or Decimal(0),
                str(c.alert.alert_id),
            )
        )
        pairs = sorted({(c.rule.rule_id, c.subject) for c in candidates})
        cursor = await conn.execute(
            f"SELECT rule_id, subject, last_raised_at FROM {cooldowns}"
            " WHERE (rule_id, subject) IN (SELECT * FROM unnest(%s::text[], %s::text[]))".encode(),
            ([r for r, _ in pairs], [s for _, s in pairs]),
        )
        last = {(r, s): at for r, s, at in await cursor.fetchall()}
        cursor = await conn.execute(
            f"SELECT alert_id FROM {alerts} WHERE alert_id = ANY(%s)".encode(),
            ([c.alert.alert_id for c in candidates],),
        )
        known = {row[0] for row in await cursor.fetchall()}
        raised = []
        for candidate in candidates:
            key = (candidate.rule.rule_id, candidate.subject)
            at = candidate.alert.raised_at
            previous = last.get(key)
            if candidate.alert.alert_id in known:
                continue  # raised before: a redelivery or a replay
            if previous is not None and at < previous + timedelta(
                minutes=candidate.rule.cooldown_minutes
            ):
                continue  # within the cooldown (in event time)
            known.add(candidate.alert.alert_id)
            last[key] = at if previous is None else max(previous, at)
            raised.append(candidate)
        if not raised:
            return
        await self._store(conn, alerts, cooldowns, raised, last)
        if await self._is_live(conn, version):
            await self._queue(conn, [(c.alert, c.rule) for c in raised])

    async def _store(
        self,
        conn: Connection,
        alerts: str,
        cooldowns: str,
        raised: list[_Candidate],
        last: dict[tuple[str, str], datetime],
    ) -> None:
        """The new alerts and their rules' cooldowns, one statement each (a burst of
        crossings, say every user at 80 % at once, is hundreds of alerts)."""
        rows = [
            {
                "alert_id": str(c.alert.alert_id),
                "stream_seq": c.stream_seq,
                "raised_at": c.alert.raised_at.isoformat(),
                "alert_type": c.alert.alert_type.value,
                "severity": c.alert.severity.value,
                "rule_id": c.alert.rule_id,
                "policy_id": c.alert.policy_id,
                "alert": json.loads(c.alert.model_dump_json()),
            }
            for c in raised
        ]
        await conn.execute(
            f"""INSERT INTO {alerts} (alert_id, stream_seq, raised_at, alert_type, severity,
                rule_id, policy_id, alert)
            SELECT * FROM jsonb_to_recordset(%s::jsonb) AS (alert_id uuid, stream_seq bigint,
                raised_at timestamptz, alert_type text, severity text, rule_id text,
                policy_id text, alert jsonb)
            ON CONFLICT (alert_id) DO NOTHING""".encode(),
            (json.dumps(rows),),
        )
        touched = sorted({(c.rule.rule_id, c.subject) for c in raised})
        await conn.execute(
            f"""INSERT INTO {cooldowns} (rule_id, subject, last_raised_at)
            SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[])
            ON CONFLICT (rule_id, subject) DO UPDATE
            SET last_raised_at = EXCLUDED.last_raised_at""".encode(),
            ([r for r, _ in touched], [s for _, s in touched], [last[k] for k in touched]),
        )

    async def went_live(self, conn: Connection, version: int, *, after_seq: int) -> None:
        """Send what this version raised for the events the version it replaces never
        applied (they arrived while that one's worker was down or behind, or during the
        swap): raised by a rebuild, so not queued when raised. Earlier alerts were the
        live version's to send."""
        _, alerts, _ = (physical(t, version) for t in self.tables[-3:])
        cursor = await conn.execute(
            f"""SELECT alert FROM {alerts} WHERE stream_seq > %s
            ORDER BY stream_seq, coalesce((alert ->> 'threshold_percent')::numeric, 0),
                alert_id""".encode(),
            (after_seq,),
        )
        rules = {r.rule_id: r for r in (await self._state(conn, version)).rules}
        owed = [Alert.model_validate(row[0]) for row in await cursor.fetchall()]
        # a rule removed since has no channels to send to
        await self._queue(conn, [(a, rules[a.rule_id]) for a in owed if a.rule_id in rules])

    async def _queue(self, conn: Connection, raised: Sequence[tuple[Alert, AlertRule]]) -> None:
        """One outbox row per alert and channel of its rule, in raised order."""
        if not raised:
            return
        rows = [
            {
                "alert_id": str(alert.alert_id),
                "channel": channel,
                "subject": f"{alert.severity.value}.{alert.alert_type.value}",
                "payload": json.loads(alert.model_dump_json()),
            }
            for alert, rule in raised
            for channel in rule.channels
        ]
        await conn.execute(
            """INSERT INTO alert_outbox (alert_id, channel, subject, payload)
            SELECT alert_id, channel, subject, payload
            FROM ROWS FROM (jsonb_to_recordset(%s::jsonb) AS (alert_id uuid, channel text,
                subject text, payload jsonb)) WITH ORDINALITY AS r(alert_id, channel, subject,
                payload, n)
            ORDER BY n
            ON CONFLICT (alert_id, channel) DO NOTHING""",
            (json.dumps(rows),),
        )
        await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")

    async def _is_live(self, conn: Connection, version: int) -> bool:
        cursor = await conn.execute(
            "SELECT EXISTS (SELECT FROM projection_registry"
            " WHERE name = %s AND active_version = %s)",
            (self.name, version),
        )
        row = await cursor.fetchone()
        return bool(row and row[0])

    async def _state(self, conn: Connection, version: int) -> _Rules:
        """Policies and rules as this transaction sees them: read again whenever either
        log moved (or the transaction that moved it was rolled back)."""
        policies, rules = (
            physical(self.policies.tables[0], version),
            physical(self.tables[-3], version),
        )
        cursor = await conn.execute(
            f"SELECT current_schema(), (SELECT max(stream_seq) FROM {policies}),"
            f" (SELECT max(stream_seq) FROM {rules})".encode()
        )
        position = tuple(await cursor.fetchone() or ())
        state = self._cache.get(version)
        if state is None or state.position != position:
            state = _Rules(
                position, await load_policies(conn, policies), await load_rules(conn, rules)
            )
            self._cache[version] = state
        return state


def _violated(policy: BudgetPolicy | None, call: CallScope) -> tuple[BudgetScope, str]:
    """The scope and key a refusal counts under: the policy's own (user ``bob`` under a
    per-user policy), so each key has its own cooldown; a policy this copy does not know
    (deleted since) counts as global."""
    if policy is None:
        return BudgetScope.GLOBAL, GLOBAL_SCOPE_KEY
    return policy.scope, call.key(policy.scope) or GLOBAL_SCOPE_KEY


def _epoch_hour(instant: datetime) -> int:
    return int(instant.timestamp()) // 3600


async def load_rules(conn: Connection, log: str = "alert_rule_log") -> list[AlertRule]:
    """The default rules, replaced or removed by the rule events in ``log``."""
    cursor = await conn.execute(f"SELECT rule_id, rule, deleted FROM {log}".encode())
    changed: dict[str, Any] = {
        rule_id: (rule, deleted) for rule_id, rule, deleted in await cursor.fetchall()
    }
    rules = {r.rule_id: r for r in DEFAULT_RULES}
    for rule_id, (document, deleted) in changed.items():
        if deleted:
            rules.pop(rule_id, None)
        else:
            rules[rule_id] = AlertRule.model_validate(document)
    return sorted(rules.values(), key=lambda r: r.rule_id)
