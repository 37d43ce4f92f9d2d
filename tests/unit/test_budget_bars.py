"""The dashboard's budget bars say a window's state as the alerts do
(``budget.alerting.reached``): a threshold is reached at it and past $0."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from budget.policies import PolicyWindow
from events import BudgetPolicy
from projections.windows import WindowTotals
from services.api.console.budgets import BudgetBar

START, END = datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)


def bar(limit: str, soft_percent: str, spent: str, requests: int = 1) -> BudgetBar:
    policy = BudgetPolicy(
        policy_id="p",
        name="p",
        limit_amount=Decimal(limit),
        soft_limit_percent=Decimal(soft_percent),
    )
    totals = WindowTotals(Decimal(spent), requests, 0)
    return BudgetBar(PolicyWindow(policy, "*", START, END), totals)


@pytest.mark.parametrize(
    ("limit", "soft_percent", "spent", "requests", "state"),
    [
        ("0", "80", "0", 0, "ok"),  # a $0 limit no call has spent against
        ("100", "0.01", "0", 0, "ok"),
        ("100", "0.01", "0.01", 1, "soft"),
        ("0", "80", "0.01", 1, "exceeded"),
        ("100", "80", "79.99", 5, "ok"),
        ("100", "80", "80", 5, "soft"),
        ("100", "80", "100", 5, "exceeded"),
    ],
)
def test_a_bars_state_is_the_alerts(
    limit: str, soft_percent: str, spent: str, requests: int, state: str
) -> None:
    assert bar(limit, soft_percent, spent, requests).state == state
