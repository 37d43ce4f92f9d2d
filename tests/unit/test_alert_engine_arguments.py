"""``evaluate_thresholds`` given what the seed's callers easily pass by mistake: a spend
summary not awaited, or rows of their own. One TypeError saying what it takes, before
anything is asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from budget.alerts import AlertEngine
from budget.config import Settings
from budget.disabled import DisabledPublisher
from budget.manager import BudgetManager
from budget.pricing import PricingRegistry
from budget.tracker import UsageTracker


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(enabled=False, spool_dir=tmp_path / "spool")


@pytest.fixture
def tracker(settings: Settings) -> UsageTracker:
    return UsageTracker(settings, PricingRegistry(), DisabledPublisher())


async def test_a_spend_summary_not_awaited_says_to_await_it(
    settings: Settings, tracker: UsageTracker
) -> None:
    """Not "'coroutine' object is not iterable"."""
    engine, manager = AlertEngine(settings, tracker), BudgetManager(settings, tracker)
    with pytest.raises(TypeError, match=r"not an awaitable: await it first$"):
        await engine.evaluate_thresholds(manager.get_spend_summary())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("summary", "passed"), [([{"scope": "user", "cost": "5"}], "dict rows"), (5, "int")]
)
async def test_rows_of_another_kind_are_named(
    settings: Settings, tracker: UsageTracker, summary: object, passed: str
) -> None:
    """Not an AttributeError on 'policy' from inside the evaluation."""
    engine = AlertEngine(settings, tracker)
    with pytest.raises(TypeError, match=rf"takes SpendRow or PolicySpend rows, .* not {passed}$"):
        await engine.evaluate_thresholds(summary)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["acknowledge_alert", "resolve_alert", "get_alert"])
async def test_an_alert_id_that_is_no_uuid_is_one_line_naming_it(
    settings: Settings, tracker: UsageTracker, method: str
) -> None:
    """A mistyped id copied from a list was pydantic's several lines about 'AlertsQuery',
    with a link; ``budget alerts ack`` says it in one line."""
    engine = AlertEngine(settings, tracker)
    arguments = ("not-a-uuid", "ops") if method == "acknowledge_alert" else ("not-a-uuid",)
    with pytest.raises(ValueError, match=r"^alert_id: Input should be a valid UUID, [^\n]+$"):
        await getattr(engine, method)(*arguments)


@pytest.mark.parametrize(
    ("asked", "said"),
    [
        ({"limit": 20_000}, "limit: Input should be less than or equal to 10000"),
        ({"policy_id": 5}, "policy_id: Input should be a valid string"),
    ],
)
async def test_a_listing_out_of_range_is_one_line_naming_the_argument(
    settings: Settings, tracker: UsageTracker, asked: dict[str, object], said: str
) -> None:
    """``list_alerts(limit=20_000)`` was pydantic's several lines with a link."""
    engine = AlertEngine(settings, tracker)
    with pytest.raises(ValueError) as refused:
        await engine.list_alerts(**asked)  # type: ignore[arg-type]
    assert str(refused.value) == said
