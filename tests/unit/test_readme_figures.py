"""The README's figures are what the code gives: the host-app example's stated cost is the
cost the tracker prices that call at."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

from budget.config import Settings
from budget.disabled import DisabledPublisher
from budget.pricing import PricingRegistry
from budget.tracker import UsageTracker

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_host_app_example_states_the_cost_it_records(tmp_path: Path) -> None:
    stated = re.search(r"record\.cost  # Decimal\('([0-9.]+)'\)", README.read_text())
    assert stated is not None, "README.md's record_usage example states no cost"
    settings = Settings(enabled=False, spool_dir=tmp_path)
    tracker = UsageTracker(settings, PricingRegistry(), DisabledPublisher())
    record = tracker.usage_event(  # the README's call
        model="gpt-4o",
        provider="openai",
        input_tokens=500,
        output_tokens=250,
        cached_tokens=100,
        user_id="user123",
        project_id="search",
        tags={"feature": "summaries"},
    )
    assert record.cost == Decimal(stated.group(1))
