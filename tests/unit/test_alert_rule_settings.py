"""A rule being set that would partly do nothing is refused, naming the field: an anomaly
rule's policy_ids (it watches totals), an unpriced_usage rule's policy_ids or scopes, an
empty policy_ids or scopes (they watch nothing). Such a rule had been stored and then
quietly watched everything, or nothing. A rule already in the log is read as it is."""

from __future__ import annotations

from typing import Any, cast

import pytest

from budget.alerts import AlertEngine
from budget.config import Settings
from events import AlertRule, AlertType, BudgetScope


class Unreachable:
    """Queries and a tracker nothing may touch: the rule is refused before any change."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the refused rule reached {name}")


def engine() -> AlertEngine:
    return AlertEngine(Settings(), cast(Any, Unreachable()), queries=cast(Any, Unreachable()))


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"alert_type": AlertType.ANOMALY, "policy_ids": ("team",)}, "policy_ids"),
        ({"alert_type": AlertType.UNPRICED_USAGE, "policy_ids": ("team",)}, "policy_ids"),
        ({"alert_type": AlertType.UNPRICED_USAGE, "scopes": (BudgetScope.USER,)}, "scopes"),
        ({"policy_ids": ()}, "policy_ids"),
        ({"alert_type": AlertType.ANOMALY, "scopes": ()}, "scopes"),
        ({"alert_type": AlertType.POLICY_VIOLATION, "policy_ids": ()}, "policy_ids"),
    ],
)
async def test_a_rule_part_of_which_would_do_nothing_is_refused_naming_it(
    fields: dict[str, Any], named: str
) -> None:
    rule = AlertRule(rule_id="odd", name="odd", **fields)
    for change in (engine().add_rule, engine().create_rule):
        with pytest.raises(ValueError, match=rf"^alert rule 'odd': {named}: ") as refused:
            await change(rule)
        assert "leave" in str(refused.value)  # and how to fix it


@pytest.mark.parametrize(
    "fields",
    [
        {"alert_type": AlertType.ANOMALY, "scopes": (BudgetScope.MODEL,)},
        {"alert_type": AlertType.POLICY_VIOLATION, "policy_ids": ("team",)},
        {"threshold_percent": 75, "policy_ids": ("team",), "scopes": (BudgetScope.USER,)},
        {"alert_type": AlertType.UNPRICED_USAGE},
    ],
)
def test_a_rule_whose_every_setting_counts_is_usable(fields: dict[str, Any]) -> None:
    assert AlertRule(name="fine", **fields).unused_setting() is None
