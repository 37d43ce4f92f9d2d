"""Arithmetic on costs and totals is exact at the contract's maxima (a cost up to
MAX_COST with MAX_DECIMAL_PLACES places: 53 significant digits), not rounded to the 28
digits of Python's default decimal context. Oracles compute with ``Fraction``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from hypothesis import example, given
from hypothesis import strategies as st

from budget.alerting import threshold_amount
from budget.enforcement import assess
from budget.policies import PolicyWindow
from events import AlertRule, AlertType, BudgetPolicy, LimitAction

from money_strategies import maximal_costs

AT = datetime(2026, 5, 4, 12, tzinfo=UTC)
FULL = Decimal("123456789012.1234567890123456789012345678901234567890")
"""A cost with all the digits the contract allows."""
percents = st.decimals(min_value=Decimal("0.01"), max_value=100, places=2)


def policy(limit: Decimal, percent: Decimal = Decimal(80)) -> BudgetPolicy:
    return BudgetPolicy(
        name="cap",
        limit_amount=limit,
        soft_limit_percent=percent,
        period="daily",
        action=LimitAction.BLOCK,
    )


@given(spend=maximal_costs, estimate=maximal_costs, percent=percents)
@example(spend=FULL, estimate=Decimal("1E-40"), percent=Decimal(80))
def test_a_request_that_takes_spend_exactly_to_the_limit_is_allowed(
    spend: Decimal, estimate: Decimal, percent: Decimal
) -> None:
    limit = _exact(Fraction(spend) + Fraction(estimate))
    window = PolicyWindow(policy(limit, percent), "*", AT, AT + timedelta(days=1))
    status = assess(window, spend, estimate, AT)
    assert status.allowed
    assert status.state != "exceeded"
    assert status.remaining == estimate


@given(limit=maximal_costs, percent=percents)
@example(limit=FULL, percent=Decimal("80.01"))
def test_threshold_and_soft_limit_amounts_are_exact(limit: Decimal, percent: Decimal) -> None:
    rule = AlertRule(
        rule_id="r", name="r", alert_type=AlertType.THRESHOLD_WARNING, threshold_percent=percent
    )
    exact = _exact(Fraction(limit) * Fraction(percent) / 100)
    assert threshold_amount(rule, policy(limit)) == (percent, exact)
    assert policy(limit, percent).soft_limit == exact


def _exact(value: Fraction) -> Decimal:
    """``value`` (a terminating decimal) as a Decimal, without rounding."""
    places = 0
    while (value * 10**places).denominator != 1:
        places += 1
    return Decimal(f"{(value * 10**places).numerator}E-{places}")  # parsing never rounds
