"""``track_llm_call`` takes only what it can track, an async function: a sync function or a
generator is refused where it is decorated, before any call is made (and paid for)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from budget.config import Settings
from budget.disabled import DisabledPublisher
from budget.pricing import PricingRegistry
from budget.tracker import UsageTracker

USAGE = {"usage": {"prompt_tokens": 1000, "completion_tokens": 500}}


@pytest.fixture
def tracker(tmp_path: Path) -> UsageTracker:
    settings = Settings(enabled=False, spool_dir=tmp_path / "spool")
    return UsageTracker(settings, PricingRegistry(), DisabledPublisher())


def test_a_sync_function_is_refused_where_it_is_decorated(tracker: UsageTracker) -> None:
    calls = []

    def call() -> dict[str, object]:
        calls.append("paid")
        return USAGE

    with pytest.raises(TypeError, match=r"async function .*<locals>\.call is not one"):
        tracker.track_llm_call(model="gpt-4o")(call)  # type: ignore[arg-type]
    assert calls == []


def test_generators_are_refused_where_they_are_decorated(tracker: UsageTracker) -> None:
    def chunks() -> Iterator[str]:
        yield "a"

    async def stream() -> AsyncIterator[str]:
        yield "a"

    for function in (chunks, stream):
        with pytest.raises(TypeError, match="track_llm_call decorates an async function"):
            tracker.track_llm_call(model="gpt-4o")(function)  # type: ignore[arg-type]


async def test_async_functions_and_methods_are_tracked(tracker: UsageTracker) -> None:
    class Client:
        async def create(self) -> dict[str, object]:
            return USAGE

    async def call() -> dict[str, object]:
        return USAGE

    for function in (call, Client().create):
        assert await tracker.track_llm_call(model="gpt-4o")(function)() == USAGE
