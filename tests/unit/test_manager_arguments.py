"""``BudgetManager``'s arguments as the seed's callers might get them wrong: each is one
clear error naming what was passed and what is taken, before anything is sent."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from budget.config import Settings
from budget.disabled import DisabledPublisher
from budget.manager import BudgetManager
from budget.pricing import PricingRegistry
from budget.tracker import UsageTracker


@pytest.fixture
def manager(tmp_path: Path) -> BudgetManager:
    settings = Settings(enabled=False, spool_dir=tmp_path / "spool")
    return BudgetManager(settings, UsageTracker(settings, PricingRegistry(), DisabledPublisher()))


async def test_record_usage_takes_an_event_or_keywords_not_both_nor_a_dict(
    manager: BudgetManager,
) -> None:
    """A dict was published as it was (or failed later, in the publisher); keywords beside
    an event were dropped unseen."""
    with pytest.raises(TypeError, match=r"takes a UsageRecorded .* not dict$"):
        await manager.record_usage({"model": "gpt-4o"})  # type: ignore[arg-type]
    event = manager.tracker.usage_event(model="gpt-4o", provider="openai", input_tokens=10)
    with pytest.raises(TypeError, match=r"not both$"):
        await manager.record_usage(event, user_id="alice")
    assert await manager.record_usage(event) is event


async def test_a_policy_that_is_no_budget_policy_is_named(manager: BudgetManager) -> None:
    """Not an AttributeError on 'scope_key' from inside the checks."""
    for method in (manager.set_policy, manager.create_policy):
        with pytest.raises(TypeError, match=r"a policy is a BudgetPolicy .*, not dict$"):
            await method({"name": "cap", "limit_amount": 5})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"at": datetime(2026, 11, 1)}, r"^at: Input should have timezone info \(a datetime"),
        ({"scope": "team"}, r"^scope: Input should be 'global', 'user', "),
    ],
)
async def test_a_wrong_spend_summary_argument_is_one_line(
    manager: BudgetManager, arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        await manager.get_spend_summary("daily", **arguments)  # type: ignore[arg-type]
    assert "\n" not in str(raised.value)
