"""The rule every check follows, property-tested: BLOCK never admits past the limit,
THROTTLE never runs ahead of the pro-rata share past the soft limit, WARN never refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budget.enforcement import assess, decide
from budget.policies import PolicyWindow
from events import BudgetPolicy, LimitAction

START = datetime(2026, 6, 1, tzinfo=UTC)
END = START + timedelta(days=30)
money = st.decimals(min_value=0, max_value=1000, places=4)
elapsed = st.floats(min_value=0, max_value=0.999)


def window(action: str, limit: Decimal, soft: int = 80) -> PolicyWindow:
    policy = BudgetPolicy(
        name="p", limit_amount=limit, action=LimitAction(action), soft_limit_percent=soft
    )
    return PolicyWindow(policy, "*", START, END)


@given(money, money, money)
def test_block_admits_exactly_what_stays_within_the_limit(
    limit: Decimal, spend: Decimal, estimate: Decimal
) -> None:
    status = assess(window("block", limit), spend, estimate, START + timedelta(days=3))
    assert status.allowed == (spend + estimate <= limit and spend < limit)
    if not status.allowed:
        assert status.retry_after_seconds == (END - START - timedelta(days=3)).total_seconds()


@given(money, money, money, elapsed)
def test_throttle_admits_past_the_soft_limit_only_within_the_pro_rata_share(
    limit: Decimal, spend: Decimal, estimate: Decimal, fraction: float
) -> None:
    now = START + (END - START) * fraction
    status = assess(window("throttle", limit, soft=50), spend, estimate, now)
    after = spend + estimate
    if status.allowed:
        assert after <= limit and spend < limit
        share = limit * Decimal((now - START) // timedelta(microseconds=1)) / (30 * 86400 * 10**6)
        assert after <= limit / 2 or after <= share
    elif after <= limit and spend < limit:  # paced: told when the share will have grown enough
        assert status.retry_after_seconds is not None and status.retry_after_seconds > 0
        later = now + timedelta(seconds=status.retry_after_seconds)
        assert assess(window("throttle", limit, soft=50), spend, estimate, later).allowed


@given(money, money, money, st.sampled_from(["warn", "notify"]))
def test_warn_and_notify_never_refuse(
    limit: Decimal, spend: Decimal, estimate: Decimal, action: str
) -> None:
    status = assess(window(action, limit), spend, estimate, START)
    assert status.allowed
    expected = "exceeded" if spend + estimate > limit or spend >= limit else status.state
    assert status.state == expected


@pytest.mark.parametrize("action", ["block", "throttle"])
def test_a_reached_limit_refuses_even_a_call_estimated_at_nothing(action: str) -> None:
    """A $0 estimate (no tokens, no estimated_cost) would hold nothing; at a spent limit
    it must still be refused, or such checks would keep saying yes there."""
    now = START + timedelta(days=29)
    status = assess(window(action, Decimal(5)), Decimal("5.00"), Decimal(0), now)
    assert not status.allowed and status.state == "exceeded"
    assert status.retry_after_seconds == (END - now).total_seconds()
    result = decide([status], Decimal(0), enforced=True, reservation_id="r1")
    assert not result.allowed and result.reservation_id is None
    assert "its limit 5 is reached (5.00 spent or held)" in result.reason
    assert "whatever its estimate" in result.reason


def test_a_call_estimated_at_nothing_below_the_limit_is_admitted() -> None:
    status = assess(window("block", Decimal(5)), Decimal("4.99"), Decimal(0), START)
    assert status.allowed and status.state == "soft_limit"


def test_one_refusal_refuses_the_call_and_names_the_policy() -> None:
    now = START + timedelta(days=1)
    block = assess(window("block", Decimal(1)), Decimal("0.95"), Decimal("0.10"), now)
    warn = assess(window("warn", Decimal(100)), Decimal(0), Decimal("0.10"), now)
    result = decide([warn, block], Decimal("0.10"), enforced=True, reservation_id="r1")
    assert not result.allowed and result.action is LimitAction.BLOCK
    assert result.reservation_id is None and result.decided_by == [block.policy_id]
    assert result.remaining == Decimal("0.05")


def test_no_policy_allows_and_says_so() -> None:
    result = decide([], Decimal("0.10"), enforced=False)
    assert result.allowed and result.reason == "no policy applies"


@pytest.mark.parametrize("action", ["warn", "notify", "block", "throttle"])
def test_a_window_at_its_soft_limit_is_past_it_as_its_alert_and_its_bar_say(action: str) -> None:
    """Spend at the soft limit exactly (80 of 100, 80 %): its threshold alert has fired and
    the console's bar shows it soft (``budget.alerting.reached``: at it or past), so a
    check there says so too; it said "within every policy"."""
    now = START + timedelta(days=29)  # THROTTLE's share (96.67) is ahead of the spend
    at_it = assess(window(action, Decimal(100)), Decimal(80), Decimal(0), now)
    reaching = assess(window(action, Decimal(100)), Decimal(79), Decimal(1), now)
    assert at_it.state == reaching.state == "soft_limit"
    assert at_it.allowed and reaching.allowed
    result = decide([at_it], Decimal(0), enforced=False)
    assert result.reason == "allowed; policy 'p' is past its soft limit"
    below = assess(window(action, Decimal(100)), Decimal("79.99"), Decimal(0), now)
    assert below.state == "ok"
