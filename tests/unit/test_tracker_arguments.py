"""The tracker's arguments are checked where they are given, and a wrong one is named as
the caller spelt it: nothing a caller passed is dropped unseen."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

import budget.tracker
from budget.config import Settings
from budget.disabled import DisabledPublisher
from budget.pricing import PricingRegistry
from budget.publisher import EventPublisher, PublisherConfig
from budget.tracker import UsageTracker
from budget.usage import UsageCountError
from events.usage import MAX_COST

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


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (-5, "estimated_tokens must not be negative, got estimated_tokens=-5"),
        (10.5, "estimated_tokens must be a whole number of tokens, got 10.5"),
        ("1000", "estimated_tokens must be a whole number of tokens, got '1000'"),
    ],
)
async def test_a_wrong_estimate_of_tokens_is_named_as_passed(
    tracker: UsageTracker, tokens: object, message: str
) -> None:
    """Not as the price model's ``output_text`` (a pydantic report), nor taken as given."""
    with pytest.raises(UsageCountError, match=message):
        await tracker.check_budget("gpt-4o", estimated_tokens=tokens)  # type: ignore[arg-type]
    with pytest.raises(UsageCountError, match=message):  # where decorated, before any call
        tracker.track_llm_call(model="gpt-4o", estimated_tokens=tokens)  # type: ignore[arg-type]


def test_a_time_without_a_zone_is_refused_saying_so(tracker: UsageTracker) -> None:
    """``datetime.now()`` or ``utcnow()`` has no zone, so which instant it means (and so
    which day and month the call costs in) is a guess; it had raised a TypeError about
    subtracting datetimes, from the time bounds, naming neither the argument nor a fix."""
    naive = datetime.now(UTC).replace(tzinfo=None)
    with pytest.raises(ValueError, match=r"occurred_at .* has no time zone: .*datetime.now\(UTC\)"):
        tracker.usage_event(model="gpt-4o", provider="openai", occurred_at=naive)
    aware = naive.replace(tzinfo=UTC)
    call = {"model": "gpt-4o", "provider": "openai", "output_tokens": 1}
    assert tracker.usage_event(**call, occurred_at=aware).occurred_at == aware


@pytest.mark.parametrize(
    ("cost", "message"),
    [
        (Decimal("1E-41"), "no more than 40 decimal places"),
        (Decimal(MAX_COST + 1), "less than or equal to 1000000000000"),
        (-1, "a non-negative number of USD"),
    ],
)
async def test_an_estimate_no_cost_could_be_is_refused_where_given(
    tracker: UsageTracker, cost: object, message: str
) -> None:
    """Beyond a cost's bounds an estimate failed the enforcer's request model (a pydantic
    report, a 500 over HTTP) or, with no BLOCK policy, was allowed: the call was made, and
    when its response had no usage the estimate could not be recorded, so the call was
    lost. Refused by ``check_budget``, and by ``track_llm_call`` where it decorates."""
    with pytest.raises(ValueError, match=f"estimated_cost must be .*{message}"):
        await tracker.check_budget("gpt-4o", estimated_cost=cost)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"estimated_cost must be .*{message}"):
        tracker.track_llm_call(model="gpt-4o", estimated_cost=cost)  # type: ignore[arg-type]
    finest = Decimal("1E-40")
    assert (await tracker.check_budget("gpt-4o", estimated_cost=finest)).estimated_cost == finest


def test_the_unpriced_models_warned_of_stay_bounded(
    tracker: UsageTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each model recorded unpriced was remembered for good (to warn once): posts to the
    API naming ever new models grew its memory without end."""
    monkeypatch.setattr(budget.tracker, "_WARNED_KEPT", 4, raising=False)
    for n in range(20):
        event = tracker.usage_event(model=f"no-such-model-{n}", provider="openai", output_tokens=1)
        assert event.cost is None and event.unpriced_reason
    assert len(tracker._warned_unpriced) <= 4


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ({"user_id": "b" * 201}, "user_id must be a string of at most 200 characters, got 201"),
        ({"project_id": 5}, "project_id must be a string of at most 200 characters, got 5"),
        ({"user_id": "a\x00b"}, "user_id must not hold a NUL character"),
    ],
)
async def test_a_check_for_an_id_no_call_can_be_recorded_under_is_refused_in_one_line(
    tmp_path: Path, ids: dict[str, object], message: str
) -> None:
    """As ``instrument`` refuses them: a pydantic report on ``CallAttributes`` (a long or
    non-string id), or a NUL character sent to the enforcer (which PostgreSQL refuses, and
    no usage event can hold), named as the caller passed it, before any request."""
    settings = Settings(spool_dir=tmp_path / "spool", nats_url="nats://127.0.0.1:1")
    tracker = UsageTracker(
        settings, PricingRegistry(), EventPublisher(PublisherConfig.from_settings(settings))
    )
    with pytest.raises(ValueError) as refused:
        await tracker.check_budget("gpt-4o", **ids)  # type: ignore[arg-type]
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
