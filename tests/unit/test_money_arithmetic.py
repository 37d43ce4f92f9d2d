"""Arithmetic on costs and totals is exact at the contract's maxima (a cost up to
MAX_COST with MAX_DECIMAL_PLACES places: 53 significant digits), not rounded to the 28
digits of Python's default decimal context. Oracles compute with ``Fraction``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import assume, example, given
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
    # Estimated at nothing, the request finds the limit reached already: refused
    # (test_assessment.py::test_a_reached_limit_refuses_even_a_call_estimated_at_nothing).
    assume(estimate > 0)
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


def test_a_callers_estimate_is_read_as_exact_money() -> None:
    """``check_budget(estimated_cost=0.05)`` means five cents (as the enforcer's requests
    read it), not the float's binary value, and nothing else passes for money."""
    from budget.tracker import _usd

    assert _usd(0.05) == Decimal("0.05")
    assert _usd(3) == Decimal(3)
    assert _usd(None) is None
    exact = Decimal("0.1000000000000000055511151231257827")
    assert _usd(exact) is exact
    for wrong in (-0.01, float("nan"), float("inf"), "a dollar", Decimal("-1")):
        with pytest.raises(ValueError, match="estimated_cost must be a non-negative number"):
            _usd(wrong)  # type: ignore[arg-type]
