"""What the evaluator's set-based usage path (``projections/crossings.py``) must keep: spend
that no policy covers raises nothing yet is counted; a user's own policy replaces the
per-user one for that user; cached window totals stay exact while no rule watches them;
the same alerts however the log is batched (real PostgreSQL)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from events import (
    AlertRule,
    AlertRuleRemoved,
    AlertRuleSet,
    AlertType,
    BudgetPeriod,
    BudgetPolicy,
    BudgetScope,
    Event,
    LimitAction,
    PolicyDeleted,
    PolicySet,
)
from projections.alerts import AlertsProjection

from ledger_logs import AT, applied, daily, run_fresh_version
from support import usage_event

THRESHOLD_RULES = ("default-soft-limit", "default-critical", "default-limit-exceeded")


async def evaluated(db: str, events: list[Event]) -> list[list[tuple[Any, ...]]]:
    """The alerts (type, key, spend, cause) and the per-user spend, the same whether the
    log is applied whole or event by event, as are the alerts' ids."""
    queries = [
        "SELECT alert_type, alert ->> 'scope_key', alert ->> 'spend', alert ->> 'caused_by'"
        " FROM {alerts} ORDER BY stream_seq, alert_type",
        "SELECT scope_key, sum(cost) FROM {alert_spend_buckets} WHERE scope = 'user'"
        " GROUP BY 1 ORDER BY 1",
        "SELECT alert_id FROM {alerts} ORDER BY alert_id",
    ]
    log = applied(events)
    whole = await run_fresh_version(db, AlertsProjection(), [log], queries)
    assert await run_fresh_version(db, AlertsProjection(), [[a] for a in log], queries) == whole
    return whole[:2]


def every_threshold(key: str, total: str, cause: str) -> list[tuple[str, str, str, str]]:
    """The default rules' three alerts (as ``evaluated`` lists them) about ``key``."""
    return [
        (AlertType.LIMIT_EXCEEDED.value, key, total, cause),
        (AlertType.THRESHOLD_CRITICAL.value, key, total, cause),
        (AlertType.THRESHOLD_WARNING.value, key, total, cause),
    ]


def every_notify_threshold(key: str, total: str, cause: str) -> list[tuple[str, str, str, str]]:
    """``every_threshold`` and the administrators' notification of a NOTIFY policy."""
    return [
        (AlertType.ADMIN_NOTIFICATION.value, key, total, cause),
        *every_threshold(key, total, cause),
    ]


def spend(user: str, cost: str, minute: int) -> Event:
    return usage_event(user=user, cost=cost, at=AT.replace(minute=minute))


async def test_spend_no_policy_covers_raises_nothing_and_is_still_counted(db: str) -> None:
    alice_cap = daily("1", scope=BudgetScope.USER, scope_key="alice")
    events = [alice_cap, spend("bob", "5", 1), spend("bob", "2", 2), spend("alice", "0.5", 3)]

    alerts, users = await evaluated(db, events)

    assert alerts == []
    assert users == [("alice", Decimal("0.5")), ("bob", Decimal(7))]


async def test_a_users_own_policy_replaces_the_per_user_one_for_that_user(db: str) -> None:
    events = [
        daily("10", scope=BudgetScope.USER),
        daily("1", scope=BudgetScope.USER, scope_key="alice"),
        spend("bob", "1", 1),
        crossing := spend("alice", "1", 2),
    ]

    alerts, _ = await evaluated(db, events)

    cause = str(crossing.event_id)
    assert alerts == every_threshold("alice", "1", cause)


async def test_a_users_own_policy_out_of_its_range_leaves_her_the_per_user_one(
    db: str,
) -> None:
    """Alice's own limit for a range that ended before her spend no longer replaces the
    per-user one: her spend crosses that (as a check would count it)."""
    ended = AT.replace(hour=0)
    events = [
        daily("1", scope=BudgetScope.USER),
        PolicySet(
            occurred_at=AT - timedelta(days=1),
            policy=BudgetPolicy(
                name="alice's campaign",
                limit_amount=Decimal(100),
                scope=BudgetScope.USER,
                scope_key="alice",
                period="custom",
                custom_start=ended - timedelta(days=2),
                custom_end=ended,
            ),
        ),
        crossing := spend("alice", "1", 2),
    ]

    alerts, _ = await evaluated(db, events)

    cause = str(crossing.event_id)
    assert alerts == every_threshold("alice", "1", cause)


def daily_policy(policy_id: str, limit: str, at: datetime, **fields: Any) -> PolicySet:
    """The daily policy ``policy_id`` (global unless ``fields`` say) of ``limit`` USD, set
    (or changed) at ``at``."""
    policy = BudgetPolicy(
        policy_id=policy_id,
        name=policy_id,
        limit_amount=Decimal(limit),
        period=BudgetPeriod.DAILY,
        **fields,
    )
    return PolicySet(occurred_at=at, policy=policy)


def team_cap(limit: str, minute: int) -> PolicySet:
    """The daily global policy "team", set (or changed) at ``minute``."""
    return daily_policy("team", limit, AT.replace(minute=minute))


def notify_cap(limit: str, minute: int) -> PolicySet:
    """The daily global policy "team" as a NOTIFY one, set (or changed) at ``minute``."""
    return daily_policy("team", limit, AT.replace(minute=minute), action=LimitAction.NOTIFY)


async def test_a_limit_lowered_below_the_spend_raises_what_it_passed_at_once(
    db: str,
) -> None:
    """$85 of $100 spent (80 %); the limit lowered to $50: no later usage crosses 80, 95 or
    100 % of it (every total is past them), so the change itself raises them ($40 is
    another threshold than the $80 reached). A per-user policy added mid-period, the same
    per user."""
    lowered = team_cap("50", 2)
    per_user = daily_policy("users", "60", AT.replace(minute=3), scope=BudgetScope.USER)
    events = [
        team_cap("100", 0),
        crossing := spend("alice", "85", 1),
        lowered,
        per_user,
        spend("bob", "1", 4),
    ]

    alerts, _ = await evaluated(db, events)

    by_usage, by_change, by_new = (
        str(crossing.event_id),
        str(lowered.event_id),
        str(per_user.event_id),
    )
    assert alerts == [
        (AlertType.THRESHOLD_WARNING.value, "*", "85", by_usage),
        *every_threshold("*", "85", by_change),
        *every_threshold("alice", "85", by_new),
    ]


async def test_a_limit_raised_mid_period_has_new_thresholds_and_one_set_back_has_none(
    db: str,
) -> None:
    """A NOTIFY policy's $1 reached, then raised to $2: the thresholds of $2 (80, 95, 100 %
    and the administrators' notification) are new, and the spend that reaches $2 raises
    them. Set back to $1, whose thresholds this period already reached, raises nothing."""
    events = [
        notify_cap("1", 0),
        first := spend("alice", "1", 1),
        notify_cap("2", 2),
        second := spend("alice", "1", 3),
        notify_cap("1", 4),
    ]

    alerts, _ = await evaluated(db, events)

    assert alerts == [
        *every_notify_threshold("*", "1", str(first.event_id)),
        *every_notify_threshold("*", "2", str(second.event_id)),
    ]


async def test_a_threshold_rules_cooldown_holds_back_a_raised_limits_alert_within_it(
    db: str,
) -> None:
    """A 100 % rule cooling down for an hour: the limit raised from $1 to $2 is reached 2
    minutes after $1 (held back), then raised to $3 and reached 89 minutes after (raised)."""
    limit = AlertRule(
        rule_id="limit",
        name="limit",
        alert_type=AlertType.LIMIT_EXCEEDED,
        threshold_percent=Decimal(100),
        cooldown_minutes=60,
    )
    events = [
        *(AlertRuleRemoved(occurred_at=AT, rule_id=r) for r in THRESHOLD_RULES),
        AlertRuleSet(occurred_at=AT, rule=limit),
        team_cap("1", 0),
        first := spend("alice", "1", 1),
        team_cap("2", 2),
        spend("alice", "1", 3),
        team_cap("3", 4),
        third := usage_event(user="alice", cost="1", at=AT + timedelta(hours=1, minutes=30)),
    ]

    alerts, _ = await evaluated(db, events)

    assert alerts == [
        (AlertType.LIMIT_EXCEEDED.value, "*", "1", str(first.event_id)),
        (AlertType.LIMIT_EXCEEDED.value, "*", "3", str(third.event_id)),
    ]


async def test_a_zero_limit_is_reached_by_the_first_call_that_costs_anything(db: str) -> None:
    """A $0 per-user NOTIFY policy is passed, as a check finds it, by spend above $0: set
    when bob has spent $0.50, he is past it at once; alice, who has made free calls only,
    when her first call that costs anything comes."""
    zero = daily_policy(
        "nothing",
        "0",
        AT.replace(minute=2),
        scope=BudgetScope.USER,
        action=LimitAction.NOTIFY,
    )
    events = [
        spend("alice", "0", 0),
        spend("bob", "0.5", 1),
        zero,
        spend("alice", "0", 3),
        crossing := spend("alice", "0.01", 4),
    ]

    alerts, _ = await evaluated(db, events)

    assert alerts == [
        *every_notify_threshold("bob", "0.5", str(zero.event_id)),
        *every_notify_threshold("alice", "0.01", str(crossing.event_id)),
    ]


async def test_a_key_left_to_the_per_user_policy_past_it_is_alerted_at_once(db: str) -> None:
    """Alice's own $100 limit replaced the per-user $1 one; it is deleted with $5 spent:
    the per-user limit is hers again, and past, and no usage of hers will cross it. A
    policy set again as it was (renamed) raises nothing anew."""
    per_user = daily_policy("users", "1", AT - timedelta(days=1), scope=BudgetScope.USER)
    hers = daily_policy(
        "alice", "100", AT - timedelta(days=1), scope=BudgetScope.USER, scope_key="alice"
    )
    renamed = per_user.policy.model_copy(update={"name": "every user"})
    deleted = PolicyDeleted(occurred_at=AT.replace(minute=2), policy_id="alice")
    events = [
        per_user,
        hers,
        spend("alice", "5", 1),
        deleted,
        PolicySet(occurred_at=AT.replace(minute=3), policy=renamed),
    ]

    alerts, _ = await evaluated(db, events)

    assert alerts == every_threshold("alice", "5", str(deleted.event_id))


async def test_a_policy_whose_period_grows_past_the_spend_raises_at_once(db: str) -> None:
    """$10 a day, $7 spent yesterday and $6 today: under the limit each day. The same $10
    made monthly holds $13 already: its thresholds are new, and past."""
    daily_cap = team_cap("10", 0)
    monthly = daily_cap.policy.model_copy(update={"period": BudgetPeriod.MONTHLY})
    changed = PolicySet(occurred_at=AT.replace(minute=5), policy=monthly)
    yesterday = usage_event(user="alice", cost="7", at=AT - timedelta(days=1))
    events = [
        PolicySet(occurred_at=AT - timedelta(days=2), policy=daily_cap.policy),
        yesterday,
        spend("alice", "6", 1),
        changed,
    ]

    alerts, _ = await evaluated(db, events)

    assert alerts == every_threshold("*", "13", str(changed.event_id))


async def test_a_rule_added_below_the_spend_raises_at_once(db: str) -> None:
    half = AlertRule(
        rule_id="half",
        name="half",
        alert_type=AlertType.THRESHOLD_WARNING,
        threshold_percent=Decimal(50),
    )
    added = AlertRuleSet(occurred_at=AT.replace(minute=2), rule=half)
    events = [team_cap("100", 0), spend("alice", "60", 1), added]

    alerts, _ = await evaluated(db, events)

    assert alerts == [(AlertType.THRESHOLD_WARNING.value, "*", "60", str(added.event_id))]


async def test_window_totals_stay_exact_while_no_rule_watches_them(db: str) -> None:
    """Spend counted while the threshold rules are removed still counts once one is back."""
    limit = AlertRule(
        rule_id="limit",
        name="limit",
        alert_type=AlertType.LIMIT_EXCEEDED,
        threshold_percent=Decimal(100),
    )
    removed = [AlertRuleRemoved(occurred_at=AT, rule_id=r) for r in THRESHOLD_RULES]
    events = [
        daily("1", scope=BudgetScope.USER),
        spend("alice", "0.5", 1),
        *removed,
        spend("alice", "0.4", 2),
        AlertRuleSet(occurred_at=AT, rule=limit),
        crossing := spend("alice", "0.2", 3),
    ]

    alerts, _ = await evaluated(db, events)

    assert alerts == [(AlertType.LIMIT_EXCEEDED.value, "alice", "1.1", str(crossing.event_id))]
