"""Benchmark: ``PricingRegistry.price`` beside genai-prices' ``calc_price`` (and litellm's
``cost_per_token`` when importable), on a golden set whose values must agree.

Prints one JSON line per figure: ``{"figure": ..., "value": ..., "unit": ...}``.
Run: ``.venv/bin/python bench/pricing.py [--calls 100000]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price

from budget.pricing import Priced, PricingRegistry
from budget.usage import normalize_usage
from events.usage import Usage

AT = datetime(2026, 11, 29, 12, tzinfo=UTC)
GOLDEN: list[tuple[str, str, Usage]] = [
    ("openai", "gpt-4o", normalize_usage(input_tokens=1000, output_tokens=500, cached_tokens=200)),
    (
        "openai",
        "o4-mini",
        normalize_usage(input_tokens=900, output_tokens=2000, reasoning_tokens=1500),
    ),
    (
        "anthropic",
        "claude-sonnet-4",
        normalize_usage(
            input_tokens=10_000, output_tokens=1000, cached_tokens=2000, cache_write_tokens=3000
        ),
    ),
    ("google", "gemini-2.5-pro", normalize_usage(input_tokens=100_000, output_tokens=10_000)),
    ("google", "gemini-2.5-pro", normalize_usage(input_tokens=250_000, output_tokens=10_000)),
    ("mistral", "mistral-large-2411", normalize_usage(input_tokens=5000, output_tokens=700)),
    ("groq", "llama-3.3-70b-versatile", normalize_usage(input_tokens=4000, output_tokens=800)),
    ("x-ai", "grok-3", normalize_usage(input_tokens=3000, output_tokens=300, cached_tokens=1000)),
]


def emit(figure: str, value: object, unit: str | None = None) -> None:
    line: dict[str, object] = {"figure": figure, "value": value}
    if unit:
        line["unit"] = unit
    print(json.dumps(line))


def to_genai(usage: Usage) -> GenaiUsage:
    return GenaiUsage(
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.input_cache_read,
        cache_write_tokens=usage.input_cache_write,
        output_tokens=usage.output_tokens,
    )


def per_call_us(calls: int, fn: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - start) / calls * 1e6


def import_time_ms(module: str) -> float:
    code = (
        f"import time; t = time.perf_counter(); import {module}; "
        "print((time.perf_counter() - t) * 1000)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=100_000)
    calls = parser.parse_args().calls

    emit("budget_pricing_import_ms", round(import_time_ms("budget.pricing"), 1), "ms")
    emit("events_import_ms", round(import_time_ms("events"), 1), "ms")  # included above
    emit("genai_prices_data_import_ms", round(import_time_ms("genai_prices.data"), 1), "ms")
    registry = PricingRegistry()
    price = registry.price
    n = len(GOLDEN)

    mismatches = 0
    for provider, model, usage in GOLDEN:
        ours = price(provider=provider, model=model, usage=usage, at=AT)
        theirs = calc_price(
            to_genai(usage), model, provider_id=provider, genai_request_timestamp=AT
        )
        if not isinstance(ours, Priced) or ours.cost != theirs.total_price:
            mismatches += 1
            print(f"MISMATCH {provider}/{model}: {ours} != {theirs.total_price}", file=sys.stderr)
    emit("golden_cases", n)
    emit("golden_mismatches_vs_genai_prices", mismatches)

    def ours_call(i: int) -> object:
        provider, model, usage = GOLDEN[i % n]
        return price(provider=provider, model=model, usage=usage, at=AT)

    genai_usages = [to_genai(u) for _, _, u in GOLDEN]

    def genai_call(i: int) -> object:
        provider, model, _ = GOLDEN[i % n]
        return calc_price(
            genai_usages[i % n], model, provider_id=provider, genai_request_timestamp=AT
        )

    def normalize_call(i: int) -> object:
        return normalize_usage(input_tokens=1000, output_tokens=500, cached_tokens=i % 100)

    emit("registry_us_per_call", round(per_call_us(calls, ours_call), 3), "us")
    emit("genai_prices_calc_price_us_per_call", round(per_call_us(calls, genai_call), 3), "us")
    emit("normalize_usage_us_per_call", round(per_call_us(calls, normalize_call), 3), "us")

    try:
        from litellm import cost_per_token  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        emit("litellm_cost_per_token_us_per_call", None)
    else:

        def litellm_call(i: int) -> object:
            _, model, usage = GOLDEN[i % n]
            return cost_per_token(
                model=model,
                prompt_tokens=usage.input_tokens,
                completion_tokens=usage.output_tokens,
            )

        emit("litellm_cost_per_token_us_per_call", round(per_call_us(calls, litellm_call), 3), "us")

    total = sum(
        (r.cost for r in (ours_call(i) for i in range(n)) if isinstance(r, Priced)), Decimal(0)
    )
    emit("golden_total_usd", str(total))


if __name__ == "__main__":
    main()
