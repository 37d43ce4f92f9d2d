"""Every model family the seed lists ("Supported Providers") is priced, by the ids its
providers publish, with and without the provider; the catalog lists only what it can price."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from budget.pricing import Priced, PricingRegistry
from budget.pricing.rates import RateCard
from budget.usage import normalize_usage
from events.usage import ImageUsage, Usage

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)

# The seed: OpenAI GPT-4o, GPT-4o-mini, GPT-4, o1, o1-mini, DALL-E 3, text-embedding-3,
# Whisper; Anthropic Claude Sonnet 4, 3.5 Sonnet/Haiku, 3 Opus/Sonnet/Haiku; Google Gemini
# 2.5/2.0/1.5 Pro/Flash; Mistral Large, Ministral, Pixtral, Codestral; Groq LLaMA models,
# Mixtral; xAI Grok 2/3/3-mini.
SEED_MODELS: dict[str, tuple[str, ...]] = {
    "openai": ("gpt-4o", "gpt-4o-mini", "gpt-4", "o1", "o1-mini"),
    "anthropic": (
        "claude-sonnet-4-20250514",
        "claude-3-5-sonnet-20241022",
        "claude-3-5-haiku-20241022",
        "claude-3-opus-20240229",
        "claude-3-sonnet-20240229",
        "claude-3-haiku-20240307",
    ),
    "google": (
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "gemini-2.0-pro",
        "gemini-2.0-pro-exp",
        "gemini-2.0-pro-exp-02-05",
        "gemini-2.0-flash",
        "gemini-1.5-pro",
        "gemini-1.5-flash",
        "gemini-1.5-flash-8b",
    ),
    "mistral": (
        "mistral-large-latest",
        "ministral-3b-latest",
        "ministral-8b-latest",
        "ministral-3b-2410",
        "pixtral-12b-2409",
        "pixtral-large-latest",
        "codestral-latest",
    ),
    "groq": (
        "llama-3.3-70b-versatile",
        "llama-3.1-8b-instant",
        "llama3-70b-8192",
        "mixtral-8x7b-32768",
    ),
    "x-ai": ("grok-2", "grok-3", "grok-3-mini"),
}
CHAT = normalize_usage(input_tokens=1000, output_tokens=500)
NOT_CHAT: dict[str, Usage] = {
    "dall-e-3": normalize_usage(images=ImageUsage(count=1, size="1024x1024", quality="hd")),
    "text-embedding-3-small": normalize_usage(embedding_tokens=1000),
    "text-embedding-3-large": normalize_usage(embedding_tokens=1000),
    "whisper-1": normalize_usage(audio_seconds=60),
}
CASES = [(p, m, CHAT) for p, models in SEED_MODELS.items() for m in models]
CASES += [("openai", m, usage) for m, usage in NOT_CHAT.items()]


@pytest.fixture(scope="module")
def registry() -> PricingRegistry:
    return PricingRegistry()


@pytest.mark.parametrize(("provider", "model", "usage"), CASES, ids=[c[1] for c in CASES])
def test_every_model_the_seed_names_is_priced(
    registry: PricingRegistry, provider: str, model: str, usage: Usage
) -> None:
    for given in (provider, None):
        priced = registry.price(provider=given, model=model, usage=usage, at=NOW)
        assert isinstance(priced, Priced), priced
        assert priced.cost > 0
    assert registry.provider_of(model) == provider


def test_ministral_3b_latest_follows_the_model_it_names_on_each_day(
    registry: PricingRegistry,
) -> None:
    """Until 2 Dec 2025 ``-latest`` was ministral-3b-2410 ($0.04), then 3b-2512 ($0.10)."""
    before = datetime(2025, 12, 1, 23, 59, tzinfo=UTC)
    after = datetime(2025, 12, 2, tzinfo=UTC)
    cost = [
        registry.calculate_llm_cost("ministral-3b-latest", 10**6, 0, at=t) for t in (before, after)
    ]
    assert cost == [Decimal("0.04"), Decimal("0.1")]
    pricing = registry.get_model_pricing("ministral-3b-latest", at=after)
    assert pricing is not None and pricing.effective_from == date(2025, 12, 2)


def test_gemini_1_5_flash_8b_is_not_priced_as_flash(registry: PricingRegistry) -> None:
    # $0.0375 / $0.15 per million up to 128k prompt tokens, half of Gemini 1.5 Flash
    cost = registry.calculate_llm_cost("gemini-1.5-flash-8b", 100_000, 10**6, at=NOW)
    assert cost == Decimal("0.00375") + Decimal("0.15")


def test_provider_models_lists_only_models_it_can_price(registry: PricingRegistry) -> None:
    listed = [(p, m) for p in registry.get_all_providers() for m in registry.get_provider_models(p)]
    assert len(listed) > 1000
    unpriceable = []
    for provider, model in listed:
        card, _ = registry.resolve(provider, model, datetime.now(UTC))
        if not isinstance(card, RateCard) or not card.prices_anything:
            unpriceable.append((provider, model))
    assert unpriceable == []
