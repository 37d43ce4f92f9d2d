"""The seed's examples and config.yaml keys, as a user who read only the seed writes them
(``modules.budget`` spelled ``budget``): each does what the seed says."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from budget.config import Settings, load_settings
from budget.disabled import DisabledPublisher
from budget.models import BudgetPeriod, BudgetPolicy
from budget.pricing import PricingRegistry, get_pricing_registry
from budget.tracker import UsageTracker
from events import LimitAction, UsageRecorded

OVERRIDE = """\
budget:
  price_overrides:
    - provider: openai
      model: our-fine-tune
      rates: {input_uncached: "3.00", output_text: "12.00"}
      effective_from: 2026-01-01
"""


async def test_the_seeds_pricing_registry_prices_as_the_tracker_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Troubleshooting "Incorrect Costs: check for custom pricing overrides": the
    registry of ``get_pricing_registry()`` knew none of config.yaml's overrides, so it
    raised ``UnpricedModelError`` (or gave the public price) for a model the tracker
    records at the negotiated rate."""
    (tmp_path / "config.yaml").write_text(OVERRIDE)
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    registry = await get_pricing_registry()
    cost = registry.calculate_llm_cost(model="our-fine-tune", input_tokens=1000, output_tokens=500)
    assert cost == Decimal("0.009")
    # the tracker's registry, as get_usage_tracker() makes it from the same settings
    tracker_registry = PricingRegistry(settings.price_overrides)
    tracker = UsageTracker(settings, tracker_registry, DisabledPublisher())
    recorded = tracker.usage_event(
        model="our-fine-tune", provider="openai", input_tokens=1000, output_tokens=500
    )
    assert recorded.cost == cost
    assert (await get_pricing_registry([])).get_model_pricing("our-fine-tune") is None


@pytest.mark.parametrize(
    ("estimate", "said"),
    [
        ({}, "recording it unpriced: give track_llm_call estimated_tokens or estimated_cost"),
        ({"estimated_tokens": 1000}, "recording its pre-call estimate instead"),
    ],
)
async def test_the_seeds_decorator_says_what_it_recorded_for_a_response_without_usage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, estimate: dict[str, int], said: str
) -> None:
    """The seed's ``@tracker.track_llm_call(model="gpt-4o", user_id="user123")`` gives no
    estimate: a function returning no usage was logged as "recording its pre-call estimate"
    while the call was recorded unpriced, for want of one."""
    settings = Settings(enabled=False, spool_dir=tmp_path / "spool")
    tracker = UsageTracker(settings, PricingRegistry(), DisabledPublisher())
    recorded: list[UsageRecorded] = []
    tracker.publisher.publish = _keep(recorded)  # type: ignore[method-assign]

    @tracker.track_llm_call(model="gpt-4o", user_id="user123", **estimate)
    async def my_llm_function() -> str:
        return "an answer without usage"

    with caplog.at_level(logging.WARNING, logger="budget.tracker"):
        await my_llm_function()
    [warning] = [r.getMessage() for r in caplog.records if r.name == "budget.tracker"]
    assert said in warning
    [event] = recorded
    assert (event.cost is None) == (not estimate)
    assert event.estimated_reason is not None
    assert ("recorded the pre-call estimate" in event.estimated_reason) == bool(estimate)


def _keep(recorded: list[UsageRecorded]) -> Callable[[UsageRecorded], Awaitable[None]]:
    async def publish(event: UsageRecorded) -> None:
        recorded.append(event)

    return publish


def test_configured_policies_take_the_files_default_action_and_soft_limit(
    tmp_path: Path,
) -> None:
    """The seed's ``budget.default_action`` ("default action when limit exceeded") and
    ``soft_limit_percent`` applied only to the per-user default policy: a ``budget_policies``
    entry that left them out was a WARN policy warning at 80 %, whatever the file said."""
    path = tmp_path / "config.yaml"
    path.write_text(
        "budget:\n  default_action: block\n  soft_limit_percent: 70\n"
        "budget_policies:\n"
        "  - {name: Global Monthly Budget, scope: global, period: monthly, limit_amount: 500.00}\n"
        "  - {name: Stated, limit_amount: 50, action: warn, soft_limit_percent: 90}\n"
    )
    settings = load_settings(path, environ={})
    assert [(p.action, p.soft_limit_percent) for p in settings.policies] == [
        (LimitAction.BLOCK, Decimal(70)),
        (LimitAction.WARN, Decimal(90)),
    ]
    overridden = load_settings(path, environ={"BUDGET_DEFAULT_ACTION": "throttle"})
    assert overridden.policies[0].action == LimitAction.THROTTLE


def test_a_custom_period_takes_the_explicit_dates_the_seed_describes(tmp_path: Path) -> None:
    """ "CUSTOM: user-defined period with explicit dates": a date was refused as "Input
    should have timezone info", in Python and in config.yaml (YAML reads 2026-12-01 as a
    date). A date is that day's midnight in the policy's zone, UTC without one."""
    utc = BudgetPolicy(
        name="December push",
        period=BudgetPeriod.CUSTOM,
        custom_start=date(2026, 12, 1),
        custom_end=date(2027, 1, 1),
        limit_amount=250,
    )
    assert (utc.custom_start, utc.custom_end) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    tokyo = utc.model_validate(
        utc.model_dump() | {"custom_start": date(2026, 12, 1), "timezone": "Asia/Tokyo"}
    )
    assert tokyo.custom_start == datetime(2026, 11, 30, 15, tzinfo=UTC)
    path = tmp_path / "config.yaml"
    path.write_text(
        "budget_policies:\n"
        "  - {name: Launch, period: custom, custom_start: 2026-12-01, custom_end: 2026-12-15,"
        " limit_amount: 50}\n"
    )
    [launch] = load_settings(path, environ={}).policies
    assert launch.custom_end == datetime(2026, 12, 15, tzinfo=UTC)
