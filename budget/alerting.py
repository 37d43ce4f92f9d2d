"""What raises an alert: default rules, deterministic alert ids, threshold amounts and
the hourly anomaly test. Pure functions, shared by the evaluator and ``AlertEngine``
(which event crossed a threshold is found in PostgreSQL: ``projections/crossings.py``)."""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from budget.policies import PolicyWindow, window_text
from events import Alert, AlertRule, AlertSeverity, AlertType, BudgetPolicy, BudgetScope
from events.alerts import CHANNELS
from events.usage import exact_money

__all__ = [
    "ANOMALY_FLOOR",
    "ANOMALY_MAD_FACTOR",
    "ANOMALY_MIN_DAYS",
    "ANOMALY_RATIO",
    "DEFAULT_RULES",
    "Anomaly",
    "alert_id",
    "anomaly",
    "reached",
    "threshold_alert",
    "threshold_amount",
]

_NAMESPACE = uuid.UUID("5b0d6c1e-93f7-4f43-9f38-1c4a6a1f2b70")

DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule(
        rule_id="default-soft-limit",
        name="Soft limit reached",
        alert_type=AlertType.THRESHOLD_WARNING,
        severity=AlertSeverity.WARNING,
        channels=CHANNELS,
    ),
    AlertRule(
        rule_id="default-critical",
        name="95% of the limit",
        alert_type=AlertType.THRESHOLD_CRITICAL,
        threshold_percent=Decimal(95),
        severity=AlertSeverity.CRITICAL,
        channels=CHANNELS,
    ),
    AlertRule(
        rule_id="default-limit-exceeded",
        name="Limit reached",
        alert_type=AlertType.LIMIT_EXCEEDED,
        threshold_percent=Decimal(100),
        severity=AlertSeverity.CRITICAL,
        channels=CHANNELS,
    ),
    AlertRule(
        rule_id="default-anomaly",
        name="Unusual hourly spend",
        alert_type=AlertType.ANOMALY,
        severity=AlertSeverity.WARNING,
        channels=CHANNELS,
        cooldown_minutes=60,
        scopes=(BudgetScope.GLOBAL, BudgetScope.PROVIDER, BudgetScope.MODEL, BudgetScope.PROJECT),
    ),
    AlertRule(
        rule_id="default-notify-admins",
        name="NOTIFY policy reached its limit",
        alert_type=AlertType.ADMIN_NOTIFICATION,
        threshold_percent=Decimal(100),
        severity=AlertSeverity.CRITICAL,
        channels=CHANNELS,
    ),
    AlertRule(
        rule_id="default-unpriced",
        name="Usage without a price",
        alert_type=AlertType.UNPRICED_USAGE,
        severity=AlertSeverity.WARNING,
        channels=CHANNELS,
    ),
    AlertRule(
        rule_id="default-policy-violation",
        name="Request blocked",
        alert_type=AlertType.POLICY_VIOLATION,
        severity=AlertSeverity.WARNING,
        channels=CHANNELS,
        cooldown_minutes=15,
    ),
)
"""Always in force unless replaced (same ``rule_id``) or removed."""

# The anomaly test: an hour is anomalous when its spend is at least ANOMALY_RATIO times its
# baseline, ANOMALY_MAD_FACTOR robust deviations above it, and ANOMALY_FLOOR dollars.
ANOMALY_RATIO = Decimal(3)
ANOMALY_MAD_FACTOR = Decimal(6)
ANOMALY_FLOOR = Decimal("0.10")
ANOMALY_MIN_DAYS = 7
"""Days of history the anomaly test needs (fewer: no test)."""
_MAD_TO_SIGMA = Decimal("1.4826")


def alert_id(*parts: object) -> uuid.UUID:
    """The same causes give the same id: redeliveries and replays raise nothing new."""
    return uuid.uuid5(_NAMESPACE, "|".join(str(p) for p in parts))


def threshold_amount(rule: AlertRule, policy: BudgetPolicy) -> tuple[Decimal, Decimal]:
    """(percent, dollars) at which ``rule`` fires for ``policy``."""
    percent = rule.threshold_percent or policy.soft_limit_percent
    with exact_money():
        return percent, policy.limit_amount * percent / 100


def reached(spend: Decimal, amount: Decimal) -> bool:
    """Whether ``spend`` has reached a threshold of ``amount`` USD: at it or past it, and
    past $0, so a $0 limit is reached by the first call that costs anything, as a check
    finds it passed (``projections.crossings.reaches`` says the same in SQL)."""
    return spend >= amount and spend > 0


@dataclass(frozen=True, slots=True)
class Anomaly:
    baseline: Decimal
    threshold: Decimal


def anomaly(history: Sequence[Decimal], same_weekday: Sequence[Decimal]) -> Anomaly | None:
    """The spend above which an hour is anomalous, or None without enough history.

    ``history``: the same hour of day on each of the previous days (up to 28; 0 for an
    hour without spend). ``same_weekday``: those of them on the same day of the week.
    The baseline is the median of the same hour on the same weekday when there are three
    weeks of it (weekly seasonality), else the median over the days (daily seasonality),
    which needs a week; the spread is the median absolute deviation (MAD) of the same
    sample. Medians ignore the odd spike in the history itself.
    """
    if len(history) < ANOMALY_MIN_DAYS:
        return None
    sample = same_weekday if len(same_weekday) >= 3 else history
    with exact_money():
        baseline = Decimal(statistics.median(sample))
        spread = Decimal(statistics.median(abs(x - baseline) for x in sample)) * _MAD_TO_SIGMA
        threshold = max(baseline * ANOMALY_RATIO, baseline + ANOMALY_MAD_FACTOR * spread)
    return Anomaly(baseline=baseline, threshold=max(threshold, ANOMALY_FLOOR))


def threshold_alert(
    rule: AlertRule,
    window: PolicyWindow,
    spend: Decimal,
    raised_at: datetime,
    caused_by: uuid.UUID | None = None,
) -> Alert:
    """The alert ``rule`` raises when ``window``'s spend reaches the rule's threshold: once
    per rule, policy, key, period and threshold, percent and amount (the id is derived from
    those), so a limit changed mid-period has new thresholds to reach."""
    policy = window.policy
    percent, amount = threshold_amount(rule, policy)
    with exact_money():
        amount = amount.normalize()  # 2 and 2.00 are one threshold
    # the key a per-user (project, ...) policy's window is of; a global one has none
    per_key = policy.scope_key is None and policy.scope is not BudgetScope.GLOBAL
    where = f" for {policy.scope.value} {window.key}" if per_key else ""
    return Alert(
        alert_id=alert_id(
            rule.rule_id, policy.policy_id, window.key, window.start, percent, amount
        ),
        alert_type=rule.alert_type,
        severity=rule.severity,
        rule_id=rule.rule_id,
        rule_name=rule.name,
        message=(
            f"{policy.name}{where}: spend reached {percent:f}% of {policy.limit_amount:f} USD"
            f" for {window_text(policy, window.start)}"
        ),
        raised_at=raised_at,
        caused_by=caused_by,
        policy_id=policy.policy_id,
        policy_name=policy.name,
        scope=policy.scope,
        scope_key=window.key,
        period_start=window.start,
        period_end=window.end,
        threshold_percent=percent,
        spend=spend,
        limit_amount=policy.limit_amount,
    )
