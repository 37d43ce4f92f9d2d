"""The seed's examples and config.yaml keys, as a user who read only the seed writes them
(``modules.budget`` spelled ``budget``): each does what the seed says."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from budget.config import load_settings
from budget.disabled import DisabledPublisher
from budget.pricing import PricingRegistry, get_pricing_registry
from budget.tracker import UsageTracker

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
