"""An alert's message shows its percent and limit as plain numbers, however they were
typed: a soft limit given as ``5E+1`` read "5E+1% of 1E+2 USD". It names the policy, and
the key only of a per-key policy's window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from budget.alerting import threshold_alert
from budget.policies import PolicyWindow
from events import AlertRule, AlertType, BudgetPolicy, BudgetScope

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


def test_a_message_names_the_key_of_a_per_key_policy_and_no_key_of_a_global_one() -> None:
    """A global policy's alert read "Team cap for global *: spend reached ...", a key the
    policy does not have (docs/alerts.md: "Team cap: spend reached ...")."""
    rule = AlertRule(name="soft", alert_type=AlertType.THRESHOLD_WARNING)
    cases = [
        (BudgetPolicy(name="Team cap", limit_amount=Decimal(5)), "*", "Team cap: spend"),
        (
            BudgetPolicy(name="Each", scope=BudgetScope.USER, limit_amount=Decimal(5)),
            "alice",
            "Each for user alice: spend",
        ),
        (
            BudgetPolicy(
                name="Apollo", scope=BudgetScope.PROJECT, scope_key="apollo", limit_amount=5
            ),
            "apollo",
            "Apollo: spend",
        ),
    ]
    for policy, key, start in cases:
        window = PolicyWindow(policy, key, START, START + timedelta(days=31))
        message = threshold_alert(rule, window, Decimal(4), START).message
        assert message.startswith(start), message
