"""Which policies a rule watches: the policy's action is always given, so an
``admin_notification`` rule can never be asked about a policy of unknown action by
mistake and watch it."""

from __future__ import annotations

import pytest

from events import AlertRule, AlertType, BudgetScope, LimitAction


@pytest.mark.parametrize("action", list(LimitAction))
def test_an_admin_notification_rule_watches_notify_policies_only(action: LimitAction) -> None:
    rule = AlertRule(name="admins", alert_type=AlertType.ADMIN_NOTIFICATION)
    watched = rule.watches("p", BudgetScope.USER, action=action)
    assert watched is (action is LimitAction.NOTIFY)


@pytest.mark.parametrize("action", list(LimitAction))
def test_a_threshold_rule_watches_every_action(action: LimitAction) -> None:
    rule = AlertRule(name="80 %", alert_type=AlertType.THRESHOLD_WARNING)
    assert rule.watches("p", BudgetScope.USER, action=action)


def test_the_action_must_be_given() -> None:
    rule = AlertRule(name="80 %")
    with pytest.raises(TypeError, match="action"):
        rule.watches("p", BudgetScope.USER)  # type: ignore[call-arg]
