"""Benchmark: what a consumer pays per usage event to decode a delivery and make the
document it hands to PostgreSQL, the pydantic way (``events.decode`` + ``canonical``)
beside the fast path (``projections.engine.fast_codec.decode_fast`` + ``document``).

Payloads are made by the tracker's real event builder (``UsageTracker.usage_event``:
priced by the registry, with producer, price source and rates), for a mix of models,
users, projects and tags, and an occasional ``UsageRepriced``.

Prints one JSON line per figure: ``{"figure": ..., "value": ..., "unit": ...}``.
Run: ``.venv/bin/python bench/decode.py [--events 100000] [--rounds 3]``; each figure is
the median of the rounds, in CPU time per event (the CPU is shared, so compare figures of
one run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from budget.config import Settings
from budget.disabled import DisabledPublisher
from budget.pricing import PricingRegistry
from budget.tracker import UsageTracker
from events import UsageRepriced, canonical, decode, encode
from projections.engine.fast_codec import decode_fast, document

CALLS = [
    ("openai", "gpt-4o", {"input_tokens": 1200, "output_tokens": 350, "cached_tokens": 400}),
    ("openai", "o4-mini", {"input_tokens": 900, "output_tokens": 2000, "reasoning_tokens": 1500}),
    ("anthropic", "claude-sonnet-4", {"input_tokens": 10_000, "output_tokens": 800}),
    ("google", "gemini-2.5-pro", {"input_tokens": 100_000, "output_tokens": 10_000}),
    ("openai", "text-embedding-3-small", {"embedding_tokens": 5000}),
    ("acme", "unpriced-model", {"input_tokens": 10, "output_tokens": 5}),
]


def payloads(count: int) -> list[bytes]:
    tracker = UsageTracker(Settings(), PricingRegistry(), DisabledPublisher())
    start = datetime.now(UTC) - timedelta(days=1)
    made = []
    for i in range(count):
        provider, model, counts = CALLS[i % len(CALLS)]
        event = tracker.usage_event(
            provider=provider,
            model=model,
            **counts,
            user_id=f"user-{i % 97}",
            project_id=f"project-{i % 13}",
            tags={"team": f"team-{i % 7}", "env": "prod"},
            occurred_at=start + timedelta(seconds=i / 10),
        )
        if i % 50 == 49:  # now and then a correction of the call before
            made.append(encode(_correction(event.event_id, event.occurred_at)))
        else:
            made.append(encode(event))
    return made


def _correction(corrects: object, at: datetime) -> UsageRepriced:
    return UsageRepriced.model_validate(
        {
            "occurred_at": at,
            "corrects": corrects,
            "provider": "openai",
            "model": "gpt-4o",
            "cost": Decimal("0.00123456789"),
            "reason": "price fix",
        }
    )


def per_event_us(data: list[bytes], step: Callable[[bytes], object]) -> float:
    """CPU time of this process, which other processes on a shared machine disturb less
    than they do the wall clock."""
    start = time.process_time()
    for item in data:
        step(item)
    return (time.process_time() - start) / len(data) * 1e6


def pydantic_way(data: bytes) -> str:
    return canonical(decode(data))


def fast_way(data: bytes) -> str:
    event = decode_fast(data)
    assert event is not None  # every payload here is a current-version usage event
    return document(event)


def emit(figure: str, value: object, unit: str | None = None) -> None:
    line: dict[str, object] = {"figure": figure, "value": value}
    if unit:
        line["unit"] = unit
    print(json.dumps(line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = payloads(args.events)
    emit("events", len(data))
    emit("mean_payload_bytes", round(sum(map(len, data)) / len(data)))
    ways = {"pydantic_decode_canonical": pydantic_way, "fast_decode_document": fast_way}
    rounds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):  # interleaved, so both see the same neighbours on the CPU
        for name, way in ways.items():
            rounds[name].append(per_event_us(data, way))
    for name, values in rounds.items():
        emit(f"{name}_us_per_event", round(statistics.median(values), 3), "us")
        emit(f"{name}_us_per_event_range", [round(min(values), 3), round(max(values), 3)], "us")
    ratios = [slow / fast for slow, fast in zip(*rounds.values(), strict=True)]
    emit("speedup_median", round(statistics.median(ratios), 2), "x")


if __name__ == "__main__":
    main()
