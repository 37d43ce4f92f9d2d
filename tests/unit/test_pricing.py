"""Pricing registry: golden prices (published by the providers), layers, unpriced, caching."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from budget.pricing import (
    Priced,
    PriceOverride,
    PricingRegistry,
    Unpriced,
    UnpricedModelError,
    get_pricing_registry,
    rates,
)
from budget.pricing import genai as genai_layer
from budget.pricing.supplement import MODEL_ALIASES, SUPPLEMENT, SupplementEntry
from budget.usage import normalize_usage
from events.usage import ImageUsage, Usage

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)
D = Decimal


@pytest.fixture(scope="module")
def registry() -> PricingRegistry:
    return PricingRegistry()


def llm(registry: PricingRegistry, model: str, provider: str | None = None, **counts: int) -> D:
    counts.setdefault("output_tokens", 0)
    return registry.calculate_llm_cost(model, provider=provider, at=NOW, **counts)


# --- golden prices, one current model per provider (USD per 1M tokens in comments) ---


def test_openai_gpt_4o(registry: PricingRegistry) -> None:  # $2.50 in / $10 out
    assert llm(registry, "gpt-4o", input_tokens=1_000_000, output_tokens=1_000_000) == D("12.5")


def test_openai_cached_input_is_half_price(registry: PricingRegistry) -> None:  # cached $1.25
    cost = llm(registry, "gpt-4o", input_tokens=1000, output_tokens=500, cached_tokens=200)
    assert cost == D("0.00725")  # 800 x 2.50 + 200 x 1.25 + 500 x 10, per million


def test_anthropic_claude_sonnet_4(registry: PricingRegistry) -> None:  # $3 / $15
    cost = llm(
        registry, "claude-sonnet-4-20250514", "anthropic", input_tokens=10**6, output_tokens=10**6
    )
    assert cost == D("18")


def test_anthropic_cache_writes_and_reads(registry: PricingRegistry) -> None:
    # write $3.75, read $0.30: 5000 x 3 + 2000 x 0.30 + 3000 x 3.75 + 1000 x 15
    cost = llm(
        registry,
        "claude-sonnet-4",
        "Anthropic",
        input_tokens=10_000,
        cached_tokens=2000,
        cache_write_tokens=3000,
        output_tokens=1000,
    )
    assert cost == D("0.04185")


def test_google_gemini_2_5_pro_short_prompt(registry: PricingRegistry) -> None:  # $1.25 / $10
    cost = llm(registry, "gemini-2.5-pro", input_tokens=100_000, output_tokens=10_000)
    assert cost == D("0.225")


def test_google_gemini_long_context_tier_above_200k(registry: PricingRegistry) -> None:
    # > 200k prompt tokens: $2.50 / $15 for the whole call
    cost = llm(registry, "gemini-2.5-pro", input_tokens=250_000, output_tokens=10_000)
    assert cost == D("0.775")


def test_google_tier_boundary_at_exactly_200k_is_base_rate(registry: PricingRegistry) -> None:
    assert llm(registry, "gemini-2.5-pro", input_tokens=200_000) == D("0.25")
    assert llm(registry, "gemini-2.5-pro", input_tokens=200_001) == D("0.5000025")


def test_mistral_large(registry: PricingRegistry) -> None:  # mistral-large-2411: $2 / $6
    cost = llm(registry, "mistral-large-2411", input_tokens=10**6, output_tokens=10**6)
    assert cost == D("8")


def test_groq_llama_3_3_70b(registry: PricingRegistry) -> None:  # $0.59 / $0.79
    cost = llm(registry, "llama-3.3-70b-versatile", "groq", input_tokens=10**6, output_tokens=10**6)
    assert cost == D("1.38")


def test_groq_model_without_provider_uses_checked_alias(registry: PricingRegistry) -> None:
    assert llm(registry, "llama-3.3-70b-versatile", input_tokens=10**6) == D("0.59")


def test_xai_grok_3_with_cached_input(registry: PricingRegistry) -> None:  # $3 / $15, cached $0.75
    cost = llm(
        registry, "grok-3", "xAI", input_tokens=10**6, cached_tokens=10**6, output_tokens=10**6
    )
    assert cost == D("15.75")


def test_reasoning_tokens_are_counted_once_as_output(registry: PricingRegistry) -> None:
    with_reasoning = llm(
        registry, "o4-mini", input_tokens=1000, output_tokens=2000, reasoning_tokens=1500
    )
    assert with_reasoning == D("0.0099")  # 1000 x 1.10 + 2000 x 4.40, per million
    assert with_reasoning == llm(registry, "o4-mini", input_tokens=1000, output_tokens=2000)


def test_image_dall_e_3_hd_square(registry: PricingRegistry) -> None:
    cost = registry.calculate_image_cost("dall-e-3", "1024x1024", "hd", 2, at=NOW)
    assert cost == D("0.16")


def test_image_dall_e_3_standard_wide(registry: PricingRegistry) -> None:
    assert registry.calculate_image_cost("dall-e-3", "1792x1024", "standard", 1) == D("0.08")


def test_image_dall_e_2_small(registry: PricingRegistry) -> None:
    assert registry.calculate_image_cost("dall-e-2", "256x256", "standard", 3) == D("0.048")


def test_image_gpt_image_1_by_quality(registry: PricingRegistry) -> None:
    assert registry.calculate_image_cost("gpt-image-1", "1024x1024", "low") == D("0.011")
    assert registry.calculate_image_cost("gpt-image-1", "1536x1024", "high") == D("0.25")


def test_image_unknown_quality_is_unpriced(registry: PricingRegistry) -> None:
    with pytest.raises(UnpricedModelError, match="quality standard"):
        registry.calculate_image_cost("gpt-image-1", "1024x1024", "standard")


def generated(prompt: int, output: int, model: str, registry: PricingRegistry) -> Priced | Unpriced:
    """An image generation's price, its usage counting ``output`` tokens (0: none)."""
    images = ImageUsage(count=1, size="1024x1024", quality="high")
    usage = normalize_usage(input_tokens=prompt, output_tokens=output, images=images)
    return registry.price(provider="openai", model=model, usage=usage, at=NOW)


@pytest.mark.parametrize(
    ("model", "cost"),
    [
        # OpenAI bills GPT Image models by token, the images' output tokens included
        ("gpt-image-1", D(50 * 5 + 4160 * 40) / 10**6),  # not its ~$0.167 a high image
        ("gpt-image-1-mini", D(50 * 2 + 4160 * 8) / 10**6),  # no per-image price
        ("gpt-image-2", D(50 * 5 + 4160 * 30) / 10**6),
    ],
)
def test_an_image_call_counting_its_tokens_is_priced_by_them(
    registry: PricingRegistry, model: str, cost: D
) -> None:
    priced = generated(50, 4160, model, registry)
    assert isinstance(priced, Priced) and priced.cost == cost


def test_an_image_call_counting_no_tokens_is_priced_per_image(registry: PricingRegistry) -> None:
    """A pre-call estimate: the per-image price where there is one, never $0 where not."""
    estimate = generated(50, 0, "gpt-image-1", registry)
    assert isinstance(estimate, Priced) and estimate.cost == D("0.00025") + D("0.167")
    assert estimate.source.rates["images"] == D("0.167")
    unpriced = generated(50, 0, "gpt-image-1-mini", registry)
    assert isinstance(unpriced, Unpriced) and "images of size 1024x1024" in unpriced.reason


def test_embedding_text_embedding_3_small(registry: PricingRegistry) -> None:  # $0.02
    assert registry.calculate_embedding_cost("text-embedding-3-small", 10_000) == D("0.0002")


def test_embedding_text_embedding_3_large(registry: PricingRegistry) -> None:  # $0.13
    assert registry.calculate_embedding_cost("text-embedding-3-large", 10**6) == D("0.13")


def test_audio_whisper_per_minute(registry: PricingRegistry) -> None:  # $0.006 / minute
    assert registry.calculate_audio_cost("whisper-1", 90) == D("0.009")
    assert registry.calculate_audio_cost("whisper-1", D("0.5")) == D("0.00005")


def test_price_change_on_known_date_o3() -> None:
    # OpenAI cut o3 from $10 / $40 to $2 / $8 on 2025-06-10.
    registry = PricingRegistry()
    before = datetime(2025, 6, 9, 23, 59, tzinfo=UTC)
    after = datetime(2025, 6, 10, 0, 0, tzinfo=UTC)
    assert registry.calculate_llm_cost("o3", 10**6, 10**6, at=before) == D("50")
    assert registry.calculate_llm_cost("o3", 10**6, 10**6, at=after) == D("10")


def test_price_change_reports_effective_date(registry: PricingRegistry) -> None:
    usage = normalize_usage(input_tokens=1)
    result = registry.price(provider="openai", model="o3", usage=usage, at=NOW)
    assert isinstance(result, Priced)
    assert result.source.effective_from == date(2025, 6, 10)


def test_aware_datetime_is_converted_to_utc_day() -> None:
    # 01:00 at UTC+2 on 2025-06-10 is still 2025-06-09 in UTC: the old o3 price.
    at = datetime(2025, 6, 10, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    cost = PricingRegistry().calculate_llm_cost("o3", 10**6, 0, at=at)
    assert cost == D("10")


# --- layers and sources ---


def test_genai_prices_source_names_layer_version_and_rates(registry: PricingRegistry) -> None:
    result = registry.price(
        provider="openai", model="gpt-4o", usage=normalize_usage(input_tokens=1), at=NOW
    )
    assert isinstance(result, Priced)
    assert result.source.layer == "genai-prices"
    assert result.source.data_version == "genai-prices 0.2.3"
    assert result.source.rates["input_uncached"] == D("0.0000025")


def test_supplement_source_names_layer_and_version(registry: PricingRegistry) -> None:
    usage = Usage(images=ImageUsage(count=1, size="1024x1024", quality="hd"))
    result = registry.price(provider=None, model="dall-e-3", usage=usage, at=NOW)
    assert isinstance(result, Priced)
    assert (result.source.layer, result.source.data_version) == ("supplement", "supplement 2026-11")
    assert result.source.rates == {"images": D("0.080")}


OVERRIDE = PriceOverride(
    provider="OpenAI",
    model="gpt-4o",
    rates={"input_uncached": D("1"), "output_text": D("2")},
    effective_from=date(2026, 1, 1),
    effective_to=date(2026, 2, 1),
)


def test_override_wins_inside_its_window() -> None:
    registry = PricingRegistry([OVERRIDE])
    at = datetime(2026, 1, 15, tzinfo=UTC)
    assert registry.calculate_llm_cost("gpt-4o", 10**6, 10**6, at=at) == D("3")


def test_override_matches_dated_model_ids_of_the_same_model() -> None:
    registry = PricingRegistry([OVERRIDE])
    at = datetime(2026, 1, 15, tzinfo=UTC)
    assert registry.calculate_llm_cost("gpt-4o-2024-08-06", 10**6, 0, at=at) == D("1")


def test_override_does_not_apply_before_its_window() -> None:
    registry = PricingRegistry([OVERRIDE])
    at = datetime(2025, 12, 31, 23, 59, tzinfo=UTC)
    assert registry.calculate_llm_cost("gpt-4o", 10**6, 10**6, at=at) == D("12.5")


def test_override_end_date_is_exclusive() -> None:
    registry = PricingRegistry([OVERRIDE])
    at = datetime(2026, 2, 1, tzinfo=UTC)
    assert registry.calculate_llm_cost("gpt-4o", 10**6, 10**6, at=at) == D("12.5")


def test_the_newest_override_in_force_wins_whatever_the_order() -> None:
    def rate(usd: str, since: date) -> PriceOverride:
        rates = {"input_uncached": D(usd)}
        return PriceOverride(provider="openai", model="gpt-4o", rates=rates, effective_from=since)

    # A price from January, then a renegotiated one from June, both open-ended.
    january, june = rate("2", date(2026, 1, 1)), rate("1.5", date(2026, 6, 1))
    for overrides in ([january, june], [june, january]):
        registry = PricingRegistry(overrides)
        last_of_may = datetime(2026, 5, 31, 23, 59, tzinfo=UTC)
        first_of_june = datetime(2026, 6, 1, tzinfo=UTC)
        assert registry.calculate_llm_cost("gpt-4o", 10**6, 0, at=last_of_may) == D("2")
        assert registry.calculate_llm_cost("gpt-4o", 10**6, 0, at=first_of_june) == D("1.5")


def test_override_source_is_reported() -> None:
    registry = PricingRegistry([OVERRIDE])
    usage = normalize_usage(input_tokens=10)
    at = datetime(2026, 1, 15, tzinfo=UTC)
    result = registry.price(provider="openai", model="gpt-4o", usage=usage, at=at)
    assert isinstance(result, Priced)
    assert result.source.layer == "override"
    assert result.source.effective_from == date(2026, 1, 1)


def test_override_for_other_provider_does_not_apply() -> None:
    registry = PricingRegistry([OVERRIDE])
    at = datetime(2026, 1, 15, tzinfo=UTC)
    cost = registry.calculate_llm_cost("gpt-4o", 10**6, 0, provider="azure", at=at)
    assert cost == D("2.5")


def test_override_cache_classes_fall_back_to_input_rate() -> None:
    registry = PricingRegistry([OVERRIDE])
    at = datetime(2026, 1, 15, tzinfo=UTC)
    assert registry.calculate_llm_cost("gpt-4o", 10**6, 0, cached_tokens=10**6, at=at) == D("1")


def test_override_prices_an_unknown_model() -> None:
    override = PriceOverride(
        provider="acme",
        model="acme-llm",
        rates={"input_uncached": D("0.5"), "output_text": D("1.5")},
        effective_from=date(2020, 1, 1),
    )
    registry = PricingRegistry([override])
    assert registry.calculate_llm_cost("acme-llm", 10**6, 10**6, provider="acme") == D("2")


def test_override_rejects_end_before_start() -> None:
    with pytest.raises(ValueError, match="effective_to"):
        PriceOverride(
            provider="openai",
            model="gpt-4o",
            rates={"input_uncached": D(1)},
            effective_from=date(2026, 2, 1),
            effective_to=date(2026, 1, 1),
        )


def test_override_rejects_negative_rate() -> None:
    with pytest.raises(ValueError):
        PriceOverride(
            provider="openai",
            model="gpt-4o",
            rates={"input_uncached": D(-1)},
            effective_from=date(2026, 1, 1),
        )


def override(provider: str = "openai", **rates: str) -> PriceOverride:
    return PriceOverride(
        provider=provider,
        model="gpt-4o",
        rates={k: D(v) for k, v in rates.items()},
        effective_from=date(2026, 1, 1),
    )


@pytest.mark.parametrize(("typo", "meant"), [("opnai", "openai"), ("anthropc", "anthropic")])
def test_override_rejects_a_misspelled_provider(typo: str, meant: str) -> None:
    # It would have been kept, and never applied to the provider's calls.
    with pytest.raises(ValueError, match=f"unknown provider '{typo}': did you mean '{meant}'"):
        override(typo, input_uncached="2")


@pytest.mark.parametrize(
    ("provider", "typo", "meant"),
    [
        ("openai", "gpt-4o-mnii", "gpt-4o-mini"),
        ("OpenAI", "gpt4o", "gpt-4o"),
        ("anthropic", "claude-sonet-4-5", "claude-sonnet-4-5"),
        ("gemini", "models/gemini-2.5-flsh", "gemini-2.5-flash"),
    ],
)
def test_override_rejects_a_misspelled_model(provider: str, typo: str, meant: str) -> None:
    # It would have been kept, and never applied to the calls of the model meant.
    with pytest.raises(ValueError, match=f"unknown model '{typo}' .*did you mean '{meant}'"):
        PriceOverride(
            provider=provider, model=typo, rates={"input_uncached": D(1)}, effective_from=NOW.date()
        )


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "gpt-4o-2024-08-06"),  # a dated id: priced as gpt-4o
        ("openai", "my-gpt-4o"),  # a deployment of one's own
        ("openai", "gpt-4o-mini-2"),  # a variant of one's own
        ("OpenAI", "GPT-4o-Mini"),
        ("mistral", "ministral-3b-latest"),  # the supplement's
        ("google", "gemini-2.0-pro"),  # an alias
        ("acme", "acme-llm"),
    ],
)
def test_override_accepts_known_models_and_models_of_ones_own(provider: str, model: str) -> None:
    rates = {"input_uncached": D(1)}
    assert PriceOverride(
        provider=provider, model=model, rates=rates, effective_from=NOW.date()
    ).model


@pytest.mark.parametrize("provider", ["OpenAI", "xAI", "vertex", "acme", "my-vllm"])
def test_override_accepts_known_spellings_and_providers_of_ones_own(provider: str) -> None:
    assert override(provider, input_uncached="2").provider == provider


@pytest.mark.parametrize(
    ("rates", "message"),
    [
        ({"output_text": "2500000"}, "output_text 2500000 is above any real price"),
        ({"audio_seconds": "360"}, "at most 100 USD per second"),
        ({"images": "4000"}, "at most 1000 USD per image"),
    ],
)
def test_override_rejects_an_absurd_rate(rates: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        override(**rates)


def test_override_rate_places_are_bounded() -> None:
    # 35 places: every cost had 41 (the event contract refuses them); 37 digits were
    # rounded to 28 unsaid.
    with pytest.raises(ValueError, match="no more than 20 decimal places"):
        override(input_uncached="0." + "0" * 34 + "3")
    with pytest.raises(ValueError, match="no more than 20 decimal places"):
        override(input_uncached="1.123456789012345678901234567890123456")


def test_override_with_the_finest_rate_prices_exactly() -> None:
    rate = "9999.12345678901234567891"  # 24 significant digits, 20 places
    registry = PricingRegistry([override(input_uncached=rate)])
    at = datetime(2026, 6, 1, tzinfo=UTC)
    cost = registry.calculate_llm_cost("gpt-4o", 3, 0, at=at)
    assert cost == D(rate) * 3 / 10**6
    assert cost.as_tuple().exponent >= -40


# --- unpriced: never $0 ---


def test_unknown_model_is_unpriced_with_clear_reason(registry: PricingRegistry) -> None:
    usage = normalize_usage(input_tokens=100)
    result = registry.price(provider="openai", model="gpt-99-ultra", usage=usage, at=NOW)
    assert isinstance(result, Unpriced)
    assert "gpt-99-ultra" in result.reason
    assert "'openai'" in result.reason
    assert "no price in any layer" in result.reason


def test_unknown_model_raises_unpriced_model_error(registry: PricingRegistry) -> None:
    with pytest.raises(UnpricedModelError, match="no-such-model"):
        registry.calculate_llm_cost("no-such-model", 10, 10)


def test_unpriced_model_error_is_a_lookup_error() -> None:
    assert issubclass(UnpricedModelError, LookupError)


def test_usage_class_without_rate_is_unpriced_not_free(registry: PricingRegistry) -> None:
    usage = normalize_usage(input_tokens=10, output_tokens=5)  # embeddings have no output price
    result = registry.price(provider=None, model="text-embedding-3-small", usage=usage, at=NOW)
    assert isinstance(result, Unpriced)
    assert "output_text" in result.reason


@pytest.mark.parametrize(
    ("provider", "model"),
    [("cerebras", "qwen-3-coder-480b"), ("openrouter", "google/lyria-3-pro-preview")],
)
def test_a_model_listed_without_prices_is_unpriced_not_free(
    registry: PricingRegistry, provider: str, model: str
) -> None:
    # genai-prices lists them with no price at all; they are not free (Cerebras bills
    # Qwen 3 Coder 480B, Google bills Lyria).
    usage = normalize_usage(input_tokens=1000, output_tokens=1000)
    assert isinstance(registry.price(provider=provider, model=model, usage=usage, at=NOW), Unpriced)
    assert model not in registry.get_provider_models(provider, at=NOW)


@pytest.mark.parametrize(
    ("provider", "model"), [("openai", "tts-1"), ("cerebras", "qwen-3-coder-480b")]
)
def test_a_model_with_no_rate_usage_is_priced_by_never_costs_0(
    registry: PricingRegistry, provider: str, model: str
) -> None:
    # tts-1 is billed per character, which no usage class counts: a call recorded with no
    # counts (a host's own record) had cost $0.
    result = registry.price(provider=provider, model=model, usage=Usage(), at=NOW)
    assert (
        isinstance(result, Unpriced) and "has no rate usage events are priced by" in result.reason
    )
    assert registry.get_model_pricing(model, provider, NOW) is None


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openrouter", "deepseek/deepseek-chat-v3-0324:free"),
        ("google", "gemma-3"),
        ("openai", "moderation"),
    ],
)
def test_a_model_the_price_data_calls_free_costs_nothing(
    registry: PricingRegistry, provider: str, model: str
) -> None:
    usage = normalize_usage(input_tokens=1000, output_tokens=1000)
    result = registry.price(provider=provider, model=model, usage=usage, at=NOW)
    assert isinstance(result, Priced) and result.cost == 0


def test_audio_on_a_text_model_is_unpriced(registry: PricingRegistry) -> None:
    with pytest.raises(UnpricedModelError, match="audio_seconds"):
        registry.calculate_audio_cost("gpt-4o", 10)


def test_model_for_wrong_provider_is_unpriced(registry: PricingRegistry) -> None:
    usage = normalize_usage(input_tokens=1)
    result = registry.price(provider="openai", model="claude-sonnet-4", usage=usage, at=NOW)
    assert isinstance(result, Unpriced)


# --- aliases, lookups, seed API ---


@pytest.mark.parametrize("alias", sorted(MODEL_ALIASES))
def test_alias_target_exists_in_genai_prices(alias: str) -> None:
    provider, target = MODEL_ALIASES[alias]
    found = genai_layer.find_model(provider, target)
    assert found is not None and found[0].id == provider


@pytest.mark.parametrize("alias", sorted(MODEL_ALIASES))
def test_alias_is_needed(alias: str) -> None:
    provider, target = MODEL_ALIASES[alias]
    found = genai_layer.find_model(None, alias)
    assert found is None or found[0].id != provider or found[1].id != target


@pytest.mark.parametrize(
    "model",
    [
        "gemini-1.5-flash-8b-001",
        "gemini-1.5-flash-8b-latest",
        "gemini-1.5-flash-8b-exp-0924",
        "models/gemini-1.5-flash-8b",
    ],
)
def test_gemini_1_5_flash_8b_ids_are_not_priced_as_1_5_flash(
    registry: PricingRegistry, model: str
) -> None:  # Flash-8B: $0.0375 / $0.15; 1.5 Flash: $0.075 / $0.30
    cost = llm(registry, model, "google", input_tokens=100_000, output_tokens=100_000)
    assert cost == D("0.01875")


@pytest.mark.parametrize(
    "model",
    [
        "models/gemini-2.5-pro",
        "publishers/google/models/gemini-2.5-pro",
        "projects/my-project/locations/us-central1/publishers/google/models/gemini-2.5-pro",
        " Models/Gemini-2.5-Pro",
    ],
)
def test_google_resource_names_price_as_the_model(registry: PricingRegistry, model: str) -> None:
    # google-genai accepts (and Vertex AI echoes) these names: they had been unpriced.
    assert llm(registry, model, "google", input_tokens=100_000) == D("0.125")
    assert llm(registry, model, input_tokens=100_000) == D("0.125")
    assert registry.provider_of(model) == "google"


def test_a_google_resource_name_finds_the_alias(registry: PricingRegistry) -> None:
    # gemini-2.0-pro-exp is priced as 2.5 Pro (an alias), not by genai-prices' match.
    assert llm(registry, "models/gemini-2.0-pro-exp", "google", input_tokens=100_000) == D("0.125")


def test_other_models_paths_are_kept(registry: PricingRegistry) -> None:
    # Fireworks' ids are paths with "models/" in genai-prices itself.
    card, _ = registry.resolve("fireworks", "accounts/fireworks/models/deepseek-v3p2", NOW)
    assert not isinstance(card, Unpriced) and card.model == "deepseek-v3p2"


def test_override_matches_a_google_resource_name() -> None:
    override = PriceOverride(
        provider="google",
        model="gemini-2.5-pro",
        rates={"input_uncached": D("1")},
        effective_from=date(2026, 1, 1),
    )
    registry = PricingRegistry([override])
    cost = registry.calculate_llm_cost("models/gemini-2.5-pro", 10**6, 0, provider="google")
    assert cost == D("1")


@pytest.mark.parametrize("entry", SUPPLEMENT, ids=lambda e: f"{e.model} {e.effective_from}")
def test_no_supplement_entry_shadows_a_newer_genai_prices_price(entry: SupplementEntry) -> None:
    """The supplement wins over genai-prices: a genai-prices release that dates a new price
    of a supplemented model after the entry must bring the supplement up to date too."""
    found = genai_layer.find_model(entry.provider, entry.model)
    if found is not None:
        card, _ = genai_layer.card_for(*found, NOW)
        assert card.effective_from is None or card.effective_from <= entry.effective_from


def test_undated_claude_sonnet_4_prices_like_dated_id(registry: PricingRegistry) -> None:
    undated = llm(registry, "claude-sonnet-4", input_tokens=1234, output_tokens=567)
    assert undated == llm(
        registry, "claude-sonnet-4-20250514", input_tokens=1234, output_tokens=567
    )


def test_get_model_pricing_reports_rates_and_tiers(registry: PricingRegistry) -> None:
    pricing = registry.get_model_pricing("gemini-2.5-pro")
    assert pricing is not None
    assert pricing.per_million["input_uncached"] == D("1.25")
    assert pricing.tiers[0].above_input_tokens == 200_000
    assert pricing.tiers[0].per_million["output_text"] == D("15")


def test_get_model_pricing_unknown_is_none(registry: PricingRegistry) -> None:
    assert registry.get_model_pricing("no-such-model") is None


def test_get_provider_models_is_case_insensitive(registry: PricingRegistry) -> None:
    models = registry.get_provider_models("OpenAI")
    assert {"gpt-4o", "dall-e-3", "whisper-1"} <= set(models)
    assert models == registry.get_provider_models("openai")


def test_get_provider_models_names_a_misspelt_provider(registry: PricingRegistry) -> None:
    """Not [], which says the provider has no priced model; one of your own still lists
    what its overrides price (none here)."""
    with pytest.raises(ValueError, match=r"^unknown provider 'opnai': did you mean 'openai'\?$"):
        registry.get_provider_models("opnai")
    assert registry.get_provider_models("acme") == []


def test_why_unpriced_blames_a_misspelt_provider_before_the_model(
    registry: PricingRegistry,
) -> None:
    """gpt-4o has a price: under "opnai" it has none because of the provider's name."""
    assert registry.why_unpriced("gpt-4o", "openai") is None
    why = registry.why_unpriced("gpt-4o", "opnai")
    assert why is not None
    assert why.startswith("provider 'opnai' is unknown: did you mean 'openai'? no price in any")
    own = registry.why_unpriced("gpt-4o", "acme")  # a provider of one's own: no hint
    assert own is not None and own.startswith("no price in any layer for model 'gpt-4o'")


def test_get_all_providers_has_the_seed_providers(registry: PricingRegistry) -> None:
    expected = {"openai", "anthropic", "google", "mistral", "groq", "x-ai"}
    assert expected <= set(registry.get_all_providers())


# --- caching, singleton, import cost ---


def test_resolution_is_cached_per_provider_model_day(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = PricingRegistry()
    usage = normalize_usage(input_tokens=1)
    registry.price(provider="openai", model="gpt-4o", usage=usage, at=NOW)
    monkeypatch.setattr(registry, "resolve", lambda *a: pytest.fail("resolved twice"))
    registry.price(provider="openai", model="gpt-4o", usage=usage, at=NOW + timedelta(hours=1))


def test_next_day_is_resolved_again() -> None:
    registry = PricingRegistry()
    usage = normalize_usage(input_tokens=1)
    registry.price(provider="openai", model="gpt-4o", usage=usage, at=NOW)
    registry.price(provider="openai", model="gpt-4o", usage=usage, at=NOW + timedelta(days=1))
    assert len(registry._cache) == 2


async def test_get_pricing_registry_is_a_singleton_without_overrides() -> None:
    assert await get_pricing_registry() is await get_pricing_registry()


async def test_get_pricing_registry_with_overrides_is_a_new_registry() -> None:
    shared = await get_pricing_registry()
    custom = await get_pricing_registry([OVERRIDE])
    assert custom is not shared and custom.overrides == (OVERRIDE,)


def test_importing_budget_pricing_does_not_load_price_data() -> None:
    code = "import sys, budget.pricing; print('genai_prices.data' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_what_a_card_keeps_per_image_size_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flat image price (an override's) prices any size and quality a call names, and
    each one's price source was kept on the card for good: posts naming ever new sizes
    grew the API's memory without end."""
    monkeypatch.setattr(rates, "_IMAGE_SOURCES_KEPT", 4, raising=False)
    override = PriceOverride(
        provider="openai",
        model="our-image-model",
        rates={"images": D("0.05")},
        effective_from=date(2026, 1, 1),
    )
    registry = PricingRegistry([override])
    for n in range(1, 20):
        usage = Usage(images=ImageUsage(count=2, size=f"{n}x{n}"))
        priced = registry.price(provider="openai", model="our-image-model", usage=usage, at=NOW)
        assert isinstance(priced, Priced) and priced.cost == D("0.10")
        assert priced.source.rates["images"] == D("0.05")
    card, _ = registry.resolve("openai", "our-image-model", NOW)
    assert not isinstance(card, Unpriced)
    assert len(card._image_sources) <= 4
