"""The tracker's arguments are checked where they are given, and a wrong one is named as
the caller spelt it: nothing a caller passed is dropped unseen."""

from __future__ import annotations

from pathlib import Path

import pytest

from budget.config import Settings
from budget.disabled import DisabledPublisher
from budget.pricing import PricingRegistry
from budget.tracker import UsageTracker

RAW = {"prompt_tokens": 3, "completion_tokens": 1}


@pytest.fixture
def tracker(tmp_path: Path) -> UsageTracker:
    settings = Settings(enabled=False, spool_dir=tmp_path / "spool")
    return UsageTracker(settings, PricingRegistry(), DisabledPublisher())


@pytest.mark.parametrize(
    "counts", [{"input_tokens": 500}, {"output_tokens": 250, "cached_tokens": 100}]
)
def test_counts_with_a_usage_object_are_refused_not_dropped(
    tracker: UsageTracker, counts: dict[str, int]
) -> None:
    """Which did the caller mean? Recording ``usage`` and ignoring the counts (as it did)
    would count a call other than the one the caller described."""
    with pytest.raises(ValueError, match="not both: " + ", ".join(counts) + " given with usage="):
        tracker.usage_event(model="gpt-4o", provider="openai", usage=RAW, **counts)


def test_a_usage_object_or_counts_alone_are_recorded(tracker: UsageTracker) -> None:
    raw = tracker.usage_event(model="gpt-4o", provider="openai", usage=RAW)
    counted = tracker.usage_event(
        model="gpt-4o", provider="openai", input_tokens=3, output_tokens=1
    )
    assert raw.cost == counted.cost and raw.cost is not None and raw.cost > 0
