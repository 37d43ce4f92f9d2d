"""The alert evaluator finds threshold crossings exactly at the contract's maxima: through
its apply, in real PostgreSQL (``projections/crossings.py``), the event that first takes a
policy window's spend from below a generated threshold to it raises the alert, with the
total after it, both as exact running totals in log order (a ``Fraction`` reference) say;
where spend never reaches a threshold, nothing is raised. Costs, corrections (of either
sign) and limits have 40 decimal places and up to 53 significant digits."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from budget.alerting import DEFAULT_RULES
from budget.policies import CallScope, applicable
from events import BudgetScope, Event, PolicySet, UsageRecorded, UsageRepriced
from projections.alerts import AlertsProjection

from ledger_logs import Step, applied, build_log, daily, run_fresh_version, split, steps_costing
from money_strategies import maximal_costs

FULL = Decimal("123456789012.1234567890123456789012345678901234567890")
"""A cost with all the digits the contract allows."""
TINY = Decimal("1E-40")
"""The least cost there is: 28-digit arithmetic loses it next to ``FULL``."""
FULL_AND_TINY = Decimal("123456789012.1234567890123456789012345678901234567891")

percents = st.decimals(min_value=Decimal("0.01"), max_value=100, places=2)
soft_percents = st.tuples(percents, percents, percents)
Limits = tuple[Decimal, Decimal, Decimal]

Found = tuple[str, str, str, datetime, uuid.UUID, Decimal]
"""An alert: (rule, policy, scope key, window start, the event that raised it, spend)."""


@st.composite
def spend_and_limits(draw: st.DrawFn) -> tuple[list[Step], Limits]:
    """Usage, corrections and re-sends over two UTC days (AT is 09:00), out of order in
    event time, and three limits, each anywhere in the contract's range or exactly a sum of
    the first generated costs: where every digit, and reaching versus passing, decide
    whether and where spend crosses. A crossing of the first day after one of the second
    is raised too (the default rules have no cooldown)."""
    generated = draw(steps_costing(maximal_costs))
    costs = [Fraction(cost) for _, _, cost, _ in generated if cost is not None]
    sums = [_exact(sum(costs[:n], Fraction(0))) for n in range(1, len(costs) + 1)]
    limit = (maximal_costs | st.sampled_from(sums)) if sums else maximal_costs
    return generated, (draw(limit), draw(limit), draw(limit))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(spend=spend_and_limits(), percents=soft_percents, cuts=st.lists(st.booleans(), max_size=45))
@example(
    # alice's FULL reaches her own limit and the global soft limits, bob's TINY then takes
    # the global total to its limit exactly; after alice's correction to 0, her TINY
    # reaches her limit again, but its alerts were raised; bob stays far below his
    spend=(
        [
            ("usage", "alice", FULL, 0),
            ("usage", "bob", TINY, 1),
            ("correct", 0, Decimal(0), 0),
            ("usage", "alice", TINY, 2),
        ],
        (FULL_AND_TINY, FULL, TINY),
    ),
    percents=(Decimal(80), Decimal("99.99"), Decimal(100)),
    cuts=[],
)
async def test_the_alert_comes_from_the_event_whose_exact_running_total_reaches_the_threshold(
    db: str,
    spend: tuple[list[Step], Limits],
    percents: tuple[Decimal, Decimal, Decimal],
    cuts: list[bool],
) -> None:
    generated, (everyone, each_user, alices) = spend
    p_everyone, p_each_user, p_alices = percents
    policies = [
        daily(str(everyone), soft_limit_percent=p_everyone),
        daily(str(each_user), soft_limit_percent=p_each_user, scope=BudgetScope.USER),
        daily(str(alices), soft_limit_percent=p_alices, scope=BudgetScope.USER, scope_key="alice"),
    ]
    events = build_log(generated, policies)
    [raised] = await run_fresh_version(
        db,
        AlertsProjection(),
        split(applied(events), cuts),
        [
            "SELECT rule_id, policy_id, alert ->> 'scope_key',"
            " (alert ->> 'period_start')::timestamptz, (alert ->> 'caused_by')::uuid,"
            " (alert ->> 'spend')::numeric FROM {alerts}"
            " WHERE alert_type <> 'unpriced_usage'"  # test_unpriced_alerts.py
        ],
    )
    assert sorted(raised) == exact_crossings(events)


def exact_crossings(log: list[Event]) -> list[Found]:
    """The alerts the default threshold rules raise for ``log``, by exact running totals in
    log order: each counted change of spend (the ledger rule: a usage event when first seen,
    a correction's difference at the corrected event's time and scopes, re-sends nothing)
    is added to the total of every window it counts in; the first change that takes a
    window's total from below a rule's threshold to it (and past $0: a $0 threshold is
    reached by spend above it) raises that rule's alert there."""
    policies = [e.policy for e in log if isinstance(e, PolicySet)]
    usage: dict[uuid.UUID, UsageRecorded] = {}
    cost: dict[uuid.UUID, Fraction] = defaultdict(Fraction)
    corrections: set[uuid.UUID] = set()
    totals: dict[tuple[str, str, datetime], Fraction] = defaultdict(Fraction)
    found: dict[tuple[str, str, str, datetime], tuple[uuid.UUID, Decimal]] = {}
    for event in log:
        if isinstance(event, UsageRecorded) and event.event_id not in usage:
            usage[event.event_id] = target = event
            new_cost = Fraction(event.cost or 0)
        elif isinstance(event, UsageRepriced) and event.event_id not in corrections:
            corrections.add(event.event_id)
            target, new_cost = usage[event.corrects], Fraction(event.cost or 0)
        else:
            continue
        change = new_cost - cost[target.event_id]
        cost[target.event_id] = new_cost
        for window in applicable(policies, CallScope.of(target), target.occurred_at):
            policy = window.policy
            where = (policy.policy_id, window.key, window.start)
            before, after = totals[where], totals[where] + change
            totals[where] = after
            for rule in DEFAULT_RULES:
                if not rule.alert_type.is_threshold or not rule.watches(
                    policy.policy_id, policy.scope, action=policy.action
                ):
                    continue
                percent = rule.threshold_percent or policy.soft_limit_percent
                threshold = Fraction(policy.limit_amount) * Fraction(percent) / 100
                if not _reaches(before, threshold) and _reaches(after, threshold):
                    found.setdefault((rule.rule_id, *where), (event.event_id, _exact(after)))
    return sorted((*alert, *cause) for alert, cause in found.items())


def _reaches(total: Fraction, threshold: Fraction) -> bool:
    return total >= threshold and total > 0


def _exact(value: Fraction) -> Decimal:
    """``value`` (a terminating decimal) as a Decimal, without rounding."""
    places = 0
    while (value * 10**places).denominator != 1:
        places += 1
    return Decimal(f"{(value * 10**places).numerator}E-{places}")  # parsing never rounds
