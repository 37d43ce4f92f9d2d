"""An alert's message shows its percent and limit as plain numbers, however they were
typed: a soft limit given as ``5E+1`` read "5E+1% of 1E+2 USD"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from budget.alerting import threshold_alert
from budget.policies import PolicyWindow
from events import AlertRule, AlertType, BudgetPolicy

START = datetime(2026, 12, 1, tzinfo=UTC)


def test_a_percent_and_limit_typed_with_an_exponent_read_as_plain_numbers() -> None:
    policy = BudgetPolicy(
        name="Team",
        limit_amount=Decimal("1E+2"),
        soft_limit_percent=Decimal("5E+1"),
    )
    window = PolicyWindow(policy, "*", START, START + timedelta(days=31))
    rule = AlertRule(name="soft", alert_type=AlertType.THRESHOLD_WARNING)
    alert = threshold_alert(rule, window, Decimal(50), START)
    assert "spend reached 50% of 100 USD" in alert.message, alert.message
