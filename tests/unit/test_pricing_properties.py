"""Property tests for the money maths: exact, additive, never negative, equal to genai-prices."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction

import pytest
from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price
from hypothesis import given, settings
from hypothesis import strategies as st

from budget.pricing import Priced, PriceOverride, PricingRegistry, Unpriced
from budget.pricing.overrides import MAX_RATES, RATE_PLACES
from events.usage import MAX_DECIMAL_PLACES, MAX_TOKENS, ImageUsage, Usage

NOW = datetime(2026, 11, 29, tzinfo=UTC)
REGISTRY = PricingRegistry()
TOKEN_FIELDS = (
    "input_uncached",
    "input_cache_read",
    "input_cache_write",
    "output_text",
    "output_reasoning",
)
# (provider, model) with cache read and write prices, flat and tiered.
MODELS = [
    ("openai", "gpt-4o"),
    ("anthropic", "claude-sonnet-4"),
    ("anthropic", "claude-sonnet-4-5"),
    ("google", "gemini-2.5-pro"),
    ("x-ai", "grok-3"),
    ("mistral", "mistral-large-2411"),
    ("groq", "llama-3.3-70b-versatile"),
]
counts = st.integers(min_value=0, max_value=2_000_000)
usages = st.builds(Usage, **{name: counts for name in TOKEN_FIELDS})


def cost(model: tuple[str, str], usage: Usage) -> Decimal:
    result = REGISTRY.price(provider=model[0], model=model[1], usage=usage, at=NOW)
    assert isinstance(result, Priced), result
    return result.cost


def genai_cost(model: tuple[str, str], usage: Usage) -> Decimal:
    genai_usage = GenaiUsage(
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.input_cache_read,
        cache_write_tokens=usage.input_cache_write,
        output_tokens=usage.output_tokens,
    )
    calc = calc_price(genai_usage, model[1], provider_id=model[0], genai_request_timestamp=NOW)
    return calc.total_price


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=60, deadline=None)
@given(usage=usages)
def test_cost_equals_genai_prices_calc_price(model: tuple[str, str], usage: Usage) -> None:
    assert cost(model, usage) == genai_cost(model, usage)


@settings(max_examples=200, deadline=None)
@given(usage=usages)
def test_cost_is_never_negative(usage: Usage) -> None:
    for model in MODELS:
        assert cost(model, usage) >= 0


@settings(max_examples=200, deadline=None)
@given(usage=usages)
def test_cost_is_additive_over_usage_classes_on_flat_prices(usage: Usage) -> None:
    model = ("openai", "gpt-4o")
    parts = [Usage(**{name: getattr(usage, name)}) for name in TOKEN_FIELDS]
    assert cost(model, usage) == sum((cost(model, part) for part in parts), Decimal(0))


@settings(max_examples=200, deadline=None)
@given(a=usages, b=usages)
def test_cost_is_additive_over_calls_on_flat_prices(a: Usage, b: Usage) -> None:
    model = ("anthropic", "claude-sonnet-4")
    both = Usage(**{name: getattr(a, name) + getattr(b, name) for name in TOKEN_FIELDS})
    assert cost(model, both) == cost(model, a) + cost(model, b)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(min_value=0, max_value=MAX_TOKENS))
def test_cost_is_exact_decimal_even_for_huge_counts(n: int) -> None:
    # gpt-4o input: $2.50 per million tokens, so n tokens cost exactly n * 25 / 10**7.
    got = cost(("openai", "gpt-4o"), Usage(input_uncached=n))
    assert Fraction(got) == Fraction(n * 25, 10**7)


@settings(max_examples=100, deadline=None)
@given(usage=usages, more=usages)
def test_more_tokens_never_cost_less(usage: Usage, more: Usage) -> None:
    # Tiered prices too (Gemini 2.5 Pro, Claude Sonnet 4.5): a tier's rates are never
    # below the base, so crossing the threshold only adds.
    bigger = Usage(**{name: getattr(usage, name) + getattr(more, name) for name in TOKEN_FIELDS})
    for model in MODELS:
        assert cost(model, bigger) >= cost(model, usage)


RATE_CLASSES = (*TOKEN_FIELDS, "embedding_tokens")
rates = st.decimals(min_value=0, max_value=MAX_RATES["tokens"], places=RATE_PLACES, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    given_rates=st.dictionaries(st.sampled_from(RATE_CLASSES), rates, min_size=len(RATE_CLASSES)),
    usage=st.builds(Usage, **{name: counts for name in RATE_CLASSES}),
)
def test_an_override_prices_exactly_within_the_contract(
    given_rates: dict[str, Decimal], usage: Usage
) -> None:
    """Any rate an override accepts prices any usage to the exact sum of count x rate, a
    Decimal the event contract holds (at most MAX_DECIMAL_PLACES places): no float, no
    rounding anywhere."""
    override = PriceOverride(
        provider="acme", model="acme-1", rates=given_rates, effective_from=date(2026, 1, 1)
    )
    result = PricingRegistry([override]).price(provider="acme", model="acme-1", usage=usage, at=NOW)
    assert isinstance(result, Priced)
    expected = (
        sum(
            (Fraction(getattr(usage, name)) * Fraction(given_rates[name]) for name in RATE_CLASSES),
            Fraction(0),
        )
        / 10**6
    )
    assert type(result.cost) is Decimal and Fraction(result.cost) == expected
    exponent = result.cost.as_tuple().exponent
    assert isinstance(exponent, int) and exponent >= -MAX_DECIMAL_PLACES
    assert all(type(rate) is Decimal for rate in result.source.rates.values())


image_usages = st.builds(
    ImageUsage,
    count=st.integers(min_value=1, max_value=10),
    size=st.sampled_from(["1024x1024", "1024x1536", "1536x1024", "auto"]),
    quality=st.sampled_from(["low", "medium", "high", "auto"]),
)


@pytest.mark.parametrize("model", ["gpt-image-1", "gpt-image-1-mini", "gpt-image-2"])
@settings(max_examples=100, deadline=None)
@given(prompt=counts, output=st.integers(min_value=1, max_value=2_000_000), images=image_usages)
def test_an_image_call_counting_its_tokens_costs_its_tokens_alone(
    model: str, prompt: int, output: int, images: ImageUsage
) -> None:
    """Whatever the images' count, size and quality: OpenAI bills the tokens, the images'
    included, so no per-image price is added to them (nor is a size without one unpriced)."""
    tokens = Usage(input_uncached=prompt, output_text=output)
    with_images = tokens.model_copy(update={"images": images})
    assert cost(("openai", model), with_images) == cost(("openai", model), tokens)


CLAUDES = [model for model in MODELS if model[0] == "anthropic"]


@pytest.mark.parametrize("model", CLAUDES)
@settings(max_examples=50, deadline=None)
@given(
    usage=usages,
    served=st.sampled_from(
        [
            {"service_tier": "batch"},
            {"service_tier": "priority"},
            {"speed": "fast"},
            {"inference_geo": "us"},
        ]
    ),
)
def test_a_claude_call_served_otherwise_than_standard_is_never_priced(
    model: tuple[str, str], usage: Usage, served: dict[str, str]
) -> None:
    standard = {"service_tier": "standard", "speed": "standard", "inference_geo": "global"}
    told = REGISTRY.price(
        provider=model[0], model=model[1], usage=usage, at=NOW, raw_usage={"usage": standard}
    )
    assert isinstance(told, Priced) and told.cost == cost(model, usage)
    other = REGISTRY.price(
        provider=model[0], model=model[1], usage=usage, at=NOW, raw_usage={"usage": served}
    )
    assert isinstance(other, Unpriced) and "rather than at a wrong rate" in other.reason
