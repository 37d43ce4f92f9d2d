"""The alert evaluator: its own consumer, its own spend totals and policy copy, so replaying
the log rebuilds the same alerts.

Per batch, in log order: usage goes into the evaluator's quarter-hour buckets (the spend
projection's code, under ``alert_spend_*``, cost measures only), counted from the usage
ledger's rows at the batch's stream sequences (``ledger.COUNTING_LEDGER``: what the usage
group has recorded, the evaluator neither decodes nor stages; what it has not, the
evaluator records itself);
then every policy window and watched hour the fresh spend touched is checked against the
rules, set-based in PostgreSQL (``projections/crossings.py``): Python works per batch and
per alert, not per event, and events no policy or rule is about cost nothing beyond being
counted. A correction counts by the ledger rule (``projections/ledger.py``): its
difference, at the corrected event's time and scopes. The event that took a window's spend
from below a threshold to it raises the alert, so an alert's id, time and cause do not
depend on where batches happen to split; a policy or rule change that puts a threshold
below a window's spend raises it then (``projections/standing.py``). A rule's cooldown
holds back an alert less than the cooldown (in event time) before or after one the rule
already raised about the same policy and key (or total): an alert about an earlier
window, raised late by a late event or a correction, is judged by its own time, not the
latest alert's. Alerts raised while this version is live go to the outbox (one row per
channel) and wake the notifier; alerts a rebuild re-derives are stored but never sent
again, except those of events the version it replaces never applied: they are queued when
the rebuild goes live.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from budget.alerting import DEFAULT_RULES, alert_id, anomaly, threshold_alert, threshold_amount
from budget.policies import CallScope, PolicyWindow
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
from projections.crossings import (
    Counted,
    Spend,
    Threshold,
    first_unpriced,
    hour_crossings,
    hour_history,
    window_crossings,
    window_totals_ddl,
)
from projections.engine.projection import Applied, Connection, Projection, physical
from projections.ledger import Recorded
from projections.policies import PoliciesProjection, load_policies
from projections.spend import Booking, SpendProjection
from projections.standing import standing_past

__all__ = ["OUTBOX_CHANNEL", "AlertsProjection", "load_rules"]

OUTBOX_CHANNEL = "alert_outbox"
"""PostgreSQL NOTIFY channel: the notifier wakes when alerts are queued."""

_USAGE = (UsageRecorded, UsageRepriced)
_WINDOW_TOTALS = "alert_window_totals"
_WHERE_A_POLICY_COUNTS = (
    "policy_id",
    "scope",
    "scope_key",
    "period",
    "timezone",
    "custom_start",
    "custom_end",
)
"""What makes a policy's windows and keys: a change of any of them moves its thresholds."""
_ALERTS = "alerts"


@dataclass(frozen=True, slots=True)
class _Candidate:
    """An alert a rule would raise, before its cooldown is checked."""

    rule: AlertRule
    subject: str
    stream_seq: int
    alert: Alert


@dataclass(frozen=True, slots=True)
class _Watch:
    """A threshold rule watching a policy, and the amount at which it fires."""

    rule: AlertRule
    threshold: Threshold


@dataclass
class _Rules:
    position: tuple[object, ...]
    """Where the policy and rule logs stood when these were read (and in which schema)."""
    policies: list[BudgetPolicy] = field(default_factory=list)
    rules: list[AlertRule] = field(default_factory=list)
    watches: list[_Watch] = field(init=False)
    anomaly_rules: list[AlertRule] = field(init=False)
    unpriced_rules: list[AlertRule] = field(init=False)

    def __post_init__(self) -> None:
        self.watches = []
        for index, policy in enumerate(self.policies):
            for rule in self.rules:
                if rule.alert_type.is_threshold and rule.watches(
                    policy.policy_id, policy.scope, action=policy.action
                ):
                    _, amount = threshold_amount(rule, policy)
                    self.watches.append(_Watch(rule, Threshold(index, amount)))
        self.anomaly_rules = [r for r in self.rules if r.alert_type is AlertType.ANOMALY]
        self.unpriced_rules = [r for r in self.rules if r.alert_type is AlertType.UNPRICED_USAGE]


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
        self.spend = SpendProjection(
            "alert_spend", counts_recorded=True, settles_reservations=False, cost_only=True
        )
        self.ledger = self.spend.ledger
        self.policies = PoliciesProjection("alert")
        self.rule_log = ChangeLog(table="alert_rule_log", key="rule_id", document="rule")
        self.tables = (
            *self.spend.tables,
            _WINDOW_TOTALS,
            *self.policies.tables,
            self.rule_log.events,
            self.rule_log.table,
            _ALERTS,
        )
        self._cache: dict[int, _Rules] = {}

    def ddl(self, version: int) -> list[str]:
        alerts = physical(_ALERTS, version)
        return [
            *self.spend.ddl(version),
            *window_totals_ddl(physical(_WINDOW_TOTALS, version)),
            *self.policies.ddl(version),
            *self.rule_log.ddl(version),
            f"""CREATE TABLE {alerts} (
                alert_id uuid PRIMARY KEY,
                stream_seq bigint NOT NULL,
                raised_at timestamptz NOT NULL,
                alert_type text NOT NULL,
                severity text NOT NULL,
                rule_id text NOT NULL,
                subject text NOT NULL,
                policy_id text,
                alert jsonb NOT NULL,
                acknowledged_by text,
                acknowledged_at timestamptz,
                resolved_by text,
                resolved_at timestamptz)""",
            f"CREATE INDEX ON {alerts} (policy_id, raised_at)",
            f"CREATE INDEX ON {alerts} (raised_at)",
            # cooldowns: the alerts a rule raised about a subject near a candidate's time
            f"CREATE INDEX ON {alerts} (rule_id, subject, raised_at)",
        ]

    def views(self, version: int) -> dict[str, str]:
        rules, alerts = physical(self.rule_log.table, version), physical(_ALERTS, version)
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
        booking = await self.spend.book(conn, version, segment)
        state = await self._state(conn, version)
        totals = physical(_WINDOW_TOTALS, version)
        if not state.watches:
            # Nothing keeps window totals up to date while no threshold rule needs them.
            await conn.execute(f"DELETE FROM {totals}".encode())
            if not state.anomaly_rules and not state.unpriced_rules:
                return  # no rule can be about usage: counting it is all there is to do
        counted = Counted.of(self.spend.ledger.usage, Recorded.of(segment), booking.corrections)
        buckets = physical(self.spend.tables[0], version)
        candidates = [
            *await self._threshold_candidates(conn, buckets, totals, state, counted),
            *await self._anomaly_candidates(conn, buckets, state, counted),
            *await self._unpriced_candidates(conn, state, counted, booking),
        ]
        await self._raise(conn, version, candidates)

    async def _threshold_candidates(
        self, conn: Connection, buckets: str, totals: str, state: _Rules, counted: Counted
    ) -> list[_Candidate]:
        if not state.watches:
            return []
        windows, crossings = await window_crossings(
            conn,
            Spend(buckets, totals),
            counted,
            state.policies,
            [w.threshold for w in state.watches],
        )
        found = []
        for crossed in crossings:
            watch, bounds = state.watches[crossed.line], windows[crossed.where]
            window = PolicyWindow(bounds.policy, crossed.key, bounds.start, bounds.end)
            alert = threshold_alert(
                watch.rule,
                window,
                crossed.total,
                crossed.occurred_at.astimezone(UTC),
                crossed.event_id,
            )
            subject = f"{window.policy.policy_id}|{window.key}"
            found.append(_Candidate(watch.rule, subject, crossed.stream_seq, alert))
        return found

    async def _anomaly_candidates(
        self, conn: Connection, buckets: str, state: _Rules, counted: Counted
    ) -> list[_Candidate]:
        rules = state.anomaly_rules
        if not rules:
            return []
        scopes = sorted({s for r in rules for s in (r.scopes or tuple(BudgetScope))})
        unusual = []
        for touched in await hour_history(conn, buckets, counted, scopes):
            past = touched.past[: touched.days]
            limits = anomaly(past, past[6::7])  # the same weekday: 7, 14, ... days before
            if limits is not None and touched.may_reach(limits.threshold):
                unusual.append((touched, limits))
        crossings = await hour_crossings(conn, counted, [(h, a.threshold) for h, a in unusual])
        found = []
        for crossed in crossings:
            history, limits = unusual[crossed.where]
            scope, key, hour = history.scope, history.key, history.hour
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
                        f"{scope.value} {key}: {crossed.total} USD spent in the hour from"
                        f" {hour:%Y-%m-%d %H:00} UTC, usually {usual} USD"
                    ),
                    raised_at=crossed.occurred_at.astimezone(UTC),
                    caused_by=crossed.event_id,
                    scope=scope,
                    scope_key=key,
                    period_start=hour,
                    period_end=hour + timedelta(hours=1),
                    spend=crossed.total,
                    baseline=limits.baseline,
                )
                subject = f"{scope.value}|{key}"
                found.append(_Candidate(rule, subject, crossed.stream_seq, alert))
        return found

    async def _unpriced_candidates(
        self, conn: Connection, state: _Rules, counted: Counted, booking: Booking
    ) -> list[_Candidate]:
        """Usage without a price adds to no total, so no threshold or anomaly would ever
        say so: once a UTC day per model, the first such call (or correction leaving a
        call without one) in the log does."""
        if not state.unpriced_rules or not booking.unpriced:
            return []
        found = []
        for first in await first_unpriced(conn, counted, booking.corrections):
            end = first.day + timedelta(days=1)
            for rule in state.unpriced_rules:
                alert = Alert(
                    alert_id=alert_id(rule.rule_id, first.provider, first.model, first.day),
                    alert_type=AlertType.UNPRICED_USAGE,
                    severity=rule.severity,
                    rule_id=rule.rule_id,
                    rule_name=rule.name,
                    message=(
                        f"{first.provider} {first.model} used without a price on"
                        f" {first.day:%Y-%m-%d} UTC: those calls count toward no limit, threshold"
                        " or anomaly; give the model a price (price_overrides), then run"
                        " `budget reprice`"
                    ),
                    raised_at=first.occurred_at,
                    caused_by=first.event_id,
                    scope=BudgetScope.MODEL,
                    scope_key=first.model,
                    period_start=first.day,
                    period_end=end,
                )
                subject = f"{first.provider}|{first.model}"
                found.append(_Candidate(rule, subject, first.stream_seq, alert))
        return found

    # -- other events ------------------------------------------------------------------------

    async def _apply_other(self, conn: Connection, version: int, applied: Applied) -> None:
        event = applied.event
        alerts = physical(_ALERTS, version)
        if isinstance(event, PolicySet | PolicyDeleted):
            before = await self._state(conn, version)
            await self.policies.apply(conn, version, [applied])
            await self._raise_standing(conn, version, applied, before)
        elif isinstance(event, AlertRuleSet):
            before = await self._state(conn, version)
            rule = event.rule
            await self.rule_log.record(conn, version, applied, rule.rule_id, rule.model_dump_json())
            await self._raise_standing(conn, version, applied, before)
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

    async def _raise_standing(
        self, conn: Connection, version: int, applied: Applied, before: _Rules
    ) -> None:
        """The threshold alerts a policy or rule change (``applied``; ``before`` it) made
        that spend is already past, as no usage will cross them: its thresholds that are new
        (a limit lowered, a policy or rule added; not one only renamed, whose alerts, or
        their cooldowns, are as they were), and for a key whose own policy it ended, set or
        moved, its scope's per-key policies for that key."""
        state = await self._state(conn, version)

        def threshold(rules: _Rules, watch: _Watch) -> tuple[object, ...]:
            """A threshold and the windows it is about: the same after the change, its
            alerts (and their cooldowns) are as they were."""
            policy = rules.policies[watch.threshold.policy]
            return (
                watch.rule.rule_id,
                watch.threshold.amount,
                *(getattr(policy, name) for name in _WHERE_A_POLICY_COUNTS),
            )

        known = {threshold(before, w) for w in before.watches}
        lines = [
            (line, watch.threshold)
            for line, watch in enumerate(state.watches)
            if threshold(state, watch) not in known
        ]
        event = applied.event
        changed = None  # the policy it set or deleted
        if isinstance(event, PolicySet):
            changed = event.policy.policy_id
        elif isinstance(event, PolicyDeleted):
            changed = event.policy_id
        # The keys whose own policy this change set, moved or ended: their scope's per-key
        # policies may be theirs again (``own_keys`` says whether).
        keys = {
            (p.scope, p.scope_key)
            for rules in (before, state)
            for p in rules.policies
            if p.policy_id == changed and p.scope_key is not None
        }
        buckets = physical(self.spend.tables[0], version)
        at = event.occurred_at
        passed = await standing_past(conn, buckets, state.policies, lines, at) if lines else []
        for scope, key in sorted(keys):
            per_key = [
                (line, watch.threshold)
                for line, watch in enumerate(state.watches)
                if (p := state.policies[watch.threshold.policy]).scope is scope
                and p.scope_key is None
            ]
            passed += await standing_past(conn, buckets, state.policies, per_key, at, key=key)
        found = []
        for past in passed:
            watch, window = state.watches[past.line], past.window
            alert = threshold_alert(watch.rule, window, past.total, at, applied.event.event_id)
            subject = f"{window.policy.policy_id}|{window.key}"
            found.append(_Candidate(watch.rule, subject, applied.stream_seq, alert))
        await self._raise(conn, version, found)

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
        alerts = physical(_ALERTS, version)
        # log order; several thresholds crossed by one event in rising order
        candidates.sort(
            key=lambda c: (
                c.stream_seq,
                c.alert.threshold_percent or Decimal(0),
                str(c.alert.alert_id),
            )
        )
        cursor = await conn.execute(
            f"SELECT alert_id FROM {alerts} WHERE alert_id = ANY(%s)".encode(),
            ([c.alert.alert_id for c in candidates],),
        )
        known = {row[0] for row in await cursor.fetchall()}
        fresh = [c for c in candidates if c.alert.alert_id not in known]
        near = await _raised_near(conn, alerts, fresh)
        raised = []
        for candidate in fresh:
            if candidate.alert.alert_id in known:
                continue  # raised earlier in this batch: a re-send
            at = candidate.alert.raised_at
            cooldown = timedelta(minutes=candidate.rule.cooldown_minutes)
            times = near.setdefault((candidate.rule.rule_id, candidate.subject), [])
            if any(abs(at - other) < cooldown for other in times):
                continue  # within the cooldown of an alert raised before or after it
            known.add(candidate.alert.alert_id)
            times.append(at)
            raised.append(candidate)
        if not raised:
            return
        await self._store(conn, alerts, raised)
        if await self._is_live(conn, version):
            await self._queue(conn, alerts, [(c.alert, c.rule) for c in raised])

    @staticmethod
    async def _store(conn: Connection, alerts: str, raised: list[_Candidate]) -> None:
        """The new alerts, in one statement (a burst of crossings, say every user at 80 % at
        once, is hundreds of alerts): each alert's JSON as pydantic writes it, once; the
        columns are read from it by PostgreSQL."""
        documents = "[" + ",".join(c.alert.model_dump_json() for c in raised) + "]"
        await conn.execute(
            f"""INSERT INTO {alerts} (alert_id, stream_seq, raised_at, alert_type, severity,
                rule_id, subject, policy_id, alert)
            SELECT (a ->> 'alert_id')::uuid, s.seq, (a ->> 'raised_at')::timestamptz,
                a ->> 'alert_type', a ->> 'severity', a ->> 'rule_id', s.subject,
                a ->> 'policy_id', a
            FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS j(a, n)
            JOIN unnest(%s::bigint[], %s::text[]) WITH ORDINALITY AS s(seq, subject, n)
                USING (n)
            ON CONFLICT (alert_id) DO NOTHING""".encode(),
            (documents, [c.stream_seq for c in raised], [c.subject for c in raised]),
        )

    async def went_live(self, conn: Connection, version: int, *, after_seq: int) -> None:
        """Send what this version raised for the events the version it replaces never
        applied (they arrived while that one's worker was down or behind, or during the
        swap): raised by a rebuild, so not queued when raised. Earlier alerts were the
        live version's to send."""
        alerts = physical(_ALERTS, version)
        cursor = await conn.execute(
            f"""SELECT alert FROM {alerts} WHERE stream_seq > %s
            ORDER BY stream_seq, coalesce((alert ->> 'threshold_percent')::numeric, 0),
                alert_id""".encode(),
            (after_seq,),
        )
        rules = {r.rule_id: r for r in (await self._state(conn, version)).rules}
        owed = [Alert.model_validate(row[0]) for row in await cursor.fetchall()]
        # a rule removed since has no channels to send to
        await self._queue(conn, alerts, [(a, rules[a.rule_id]) for a in owed if a.rule_id in rules])

    @staticmethod
    async def _queue(
        conn: Connection, alerts: str, raised: Sequence[tuple[Alert, AlertRule]]
    ) -> None:
        """One outbox row per alert (stored in ``alerts``) and channel of its rule, in
        raised order. PostgreSQL copies each payload from the stored alert: a burst of
        hundreds of alerts crosses the wire once, not once per channel."""
        pairs = [(alert.alert_id, channel) for alert, rule in raised for channel in rule.channels]
        if not pairs:
            return
        await conn.execute(
            f"""INSERT INTO alert_outbox (alert_id, channel, subject, payload)
            SELECT a.alert_id, q.channel, a.severity || '.' || a.alert_type, a.alert
            FROM unnest(%s::uuid[], %s::text[]) WITH ORDINALITY AS q(alert_id, channel, n)
            JOIN {alerts} a ON a.alert_id = q.alert_id
            ORDER BY q.n
            ON CONFLICT (alert_id, channel) DO NOTHING""".encode(),
            ([a for a, _ in pairs], [c for _, c in pairs]),
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
            physical(self.rule_log.table, version),
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


async def _raised_near(
    conn: Connection, alerts: str, candidates: list[_Candidate]
) -> dict[tuple[str, str], list[datetime]]:
    """When the candidates' rules raised the alerts, about the same subjects, that lie within
    the rule's cooldown of a candidate (before or after it, in event time), by rule and
    subject. A rule without a cooldown holds nothing back: it is not asked about."""
    cooling = [c for c in candidates if c.rule.cooldown_minutes]
    if not cooling:
        return {}
    cursor = await conn.execute(
        f"""SELECT DISTINCT a.rule_id, a.subject, a.raised_at
        FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::int[])
            AS c(rule_id, subject, at, minutes)
        JOIN {alerts} a ON a.rule_id = c.rule_id AND a.subject = c.subject
            AND a.raised_at > c.at - make_interval(mins => c.minutes)
            AND a.raised_at < c.at + make_interval(mins => c.minutes)""".encode(),
        (
            [c.rule.rule_id for c in cooling],
            [c.subject for c in cooling],
            [c.alert.raised_at for c in cooling],
            [c.rule.cooldown_minutes for c in cooling],
        ),
    )
    near: dict[tuple[str, str], list[datetime]] = {}
    for rule_id, subject, raised_at in await cursor.fetchall():
        near.setdefault((rule_id, subject), []).append(raised_at)
    return near


def _violated(policy: BudgetPolicy | None, call: CallScope) -> tuple[BudgetScope, str]:
    """The scope and key a refusal counts under: the policy's own (user ``bob`` under a
    per-user policy), so each key has its own cooldown; a policy this copy does not know
    (deleted since) counts as global."""
    if policy is None:
        return BudgetScope.GLOBAL, GLOBAL_SCOPE_KEY
    return policy.scope, call.key(policy.scope) or GLOBAL_SCOPE_KEY


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
