"""What ``Usage`` has no class for (tokens that are not text, Anthropic's 1-hour cache
writes and web searches): read from the providers' usage objects, and a model that prices
them apart leaves the call unpriced (with why) rather than priced at the rate of the class
``Usage`` counts them in (text tokens, cache writes) or not at all."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from anthropic.types import Usage as AnthropicUsage
from google.genai import types as gemini
from openai.types import CompletionUsage
from openai.types.audio.transcription import UsageTokens as TranscriptionUsage
from openai.types.images_response import Usage as ImagesUsage

from budget.config import Settings
from budget.disabled import DisabledPublisher
from budget.pricing import Priced, PricingRegistry, Unpriced
from budget.tracker import UsageTracker
from budget.usage import modality_tokens, normalize_usage, service_tiers, usage_from_response
from events.usage import ImageUsage

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)

OPENAI_AUDIO = CompletionUsage.model_validate(
    {
        "prompt_tokens": 1200,
        "completion_tokens": 900,
        "total_tokens": 2100,
        "prompt_tokens_details": {"audio_tokens": 1000, "cached_tokens": 0},
        "completion_tokens_details": {"audio_tokens": 800, "reasoning_tokens": 0},
    }
)
OPENAI_TRANSCRIPTION = TranscriptionUsage.model_validate(
    {
        "type": "tokens",
        "input_tokens": 80,
        "input_token_details": {"text_tokens": 8, "audio_tokens": 72},
        "output_tokens": 12,
        "total_tokens": 92,
    }
)
GEMINI_AUDIO = gemini.GenerateContentResponseUsageMetadata(
    prompt_token_count=1040,
    candidates_token_count=20,
    prompt_tokens_details=[
        gemini.ModalityTokenCount(modality=gemini.MediaModality.TEXT, token_count=40),
        gemini.ModalityTokenCount(modality=gemini.MediaModality.AUDIO, token_count=1000),
    ],
)
GEMINI_IMAGE_OUT = {
    "prompt_token_count": 12,
    "candidates_token_count": 1290,
    "candidates_tokens_details": [{"modality": "IMAGE", "token_count": 1290}],
}
OPENAI_IMAGE_EDIT = ImagesUsage.model_validate(
    {
        "input_tokens": 373,
        "input_tokens_details": {"image_tokens": 323, "text_tokens": 50},
        "output_tokens": 4160,
        "total_tokens": 4533,
    }
)
OPENAI_IMAGE_GENERATION = ImagesUsage.model_validate(
    {
        "input_tokens": 50,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": 50},
        "output_tokens": 4160,
        "output_tokens_details": {"image_tokens": 4160, "text_tokens": 0},
        "total_tokens": 4210,
    }
)
OPENAI_TEXT = {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {}}
ANTHROPIC_1H_CACHE_AND_SEARCHES = AnthropicUsage.model_validate(
    {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_creation_input_tokens": 1_000_000,
        "cache_creation": {"ephemeral_1h_input_tokens": 1_000_000, "ephemeral_5m_input_tokens": 0},
        "server_tool_use": {"web_search_requests": 100, "web_fetch_requests": 0},
    }
)
ANTHROPIC_5M_CACHE = AnthropicUsage.model_validate(
    {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_creation_input_tokens": 1000,
        "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 1000},
        "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
    }
)


@pytest.fixture(scope="module")
def registry() -> PricingRegistry:
    return PricingRegistry()


def test_the_tokens_that_are_not_text_are_read_from_each_shape() -> None:
    assert modality_tokens(OPENAI_AUDIO) == {"input audio": 1000, "output audio": 800}
    assert modality_tokens({"usage": OPENAI_AUDIO}) == {"input audio": 1000, "output audio": 800}
    assert modality_tokens(GEMINI_AUDIO) == {"input audio": 1000}
    assert modality_tokens(OPENAI_TRANSCRIPTION) == {"input audio": 72}
    assert modality_tokens(OPENAI_IMAGE_EDIT) == {"input image": 323}
    assert modality_tokens(OPENAI_IMAGE_GENERATION) == {"output image": 4160}
    assert modality_tokens(GEMINI_IMAGE_OUT) == {"output image": 1290}
    assert modality_tokens(OPENAI_TEXT) == {}
    assert modality_tokens({"input_tokens": 5, "output_tokens": 1}) == {}
    assert modality_tokens(ANTHROPIC_1H_CACHE_AND_SEARCHES) == {
        "1-hour cache write": 1_000_000,
        "web search": 100,
    }
    assert modality_tokens(ANTHROPIC_5M_CACHE) == {}


def test_given_the_media_a_card_prices_apart_only_those_are_read() -> None:
    """A rate card asks only for what it prices apart (every call of its model pays for
    the look); what it reads is what the full look finds of those."""
    assert modality_tokens(OPENAI_AUDIO, {"output audio"}) == {"output audio": 800}
    assert modality_tokens(OPENAI_AUDIO, {"web search"}) == {}
    assert modality_tokens(ANTHROPIC_1H_CACHE_AND_SEARCHES, {"web search"}) == {"web search": 100}
    assert modality_tokens(GEMINI_AUDIO, {"input audio", "input image"}) == {"input audio": 1000}
    assert modality_tokens(OPENAI_IMAGE_EDIT, frozenset()) == {}


@pytest.mark.parametrize(
    ("model", "usage", "medium"),
    [
        ("gemini-2.5-flash", GEMINI_AUDIO, "1000 input audio"),
        ("gemini-2.5-flash-image", GEMINI_IMAGE_OUT, "1290 output image"),
        (
            "claude-sonnet-4",
            ANTHROPIC_1H_CACHE_AND_SEARCHES,
            "1000000 1-hour cache write tokens, 100 web searches",
        ),
    ],
)
def test_a_model_pricing_a_medium_apart_leaves_the_call_unpriced(
    registry: PricingRegistry, model: str, usage: object, medium: str
) -> None:
    provider = "anthropic" if model.startswith("claude") else "google"
    priced = registry.price(
        provider=provider, model=model, usage=usage_from_response(usage), at=NOW, raw_usage=usage
    )
    assert isinstance(priced, Unpriced)
    assert medium in priced.reason and "rather than at a wrong rate" in priced.reason


def test_text_tokens_alone_are_priced_as_before(registry: PricingRegistry) -> None:
    usage = usage_from_response({"prompt_token_count": 40, "candidates_token_count": 20})
    alone = registry.price(provider="google", model="gemini-2.5-flash", usage=usage, at=NOW)
    told = registry.price(
        provider="google", model="gemini-2.5-flash", usage=usage, at=NOW, raw_usage=OPENAI_TEXT
    )
    assert isinstance(alone, Priced) and told == alone


def test_five_minute_cache_writes_are_priced_at_the_cache_write_rate(
    registry: PricingRegistry,
) -> None:
    usage = usage_from_response(ANTHROPIC_5M_CACHE)
    priced = registry.price(
        provider="anthropic",
        model="claude-sonnet-4",
        usage=usage,
        at=NOW,
        raw_usage=ANTHROPIC_5M_CACHE,
    )
    assert isinstance(priced, Priced)
    assert priced == registry.price(
        provider="anthropic", model="claude-sonnet-4", usage=usage, at=NOW
    )


def test_the_tracker_records_such_a_call_unpriced(
    registry: PricingRegistry, tmp_path: Path
) -> None:
    tracker = UsageTracker(Settings(spool_dir=tmp_path), registry, DisabledPublisher())
    heard = tracker.usage_event(model="gemini-2.5-flash", provider="google", usage=GEMINI_AUDIO)
    assert heard.cost is None and "1000 input audio" in (heard.unpriced_reason or "")
    read = tracker.usage_event(model="gemini-2.5-flash", provider="google", usage=OPENAI_TEXT)
    assert read.cost is not None


def test_an_image_edit_is_not_priced_at_the_text_rate(registry: PricingRegistry) -> None:
    # gpt-image-1 bills the images given to edit at $10 per million tokens, the prompt's
    # text at $5: the 323 image tokens had been priced as text, at half their rate.
    usage = normalize_usage(
        input_tokens=373, images=ImageUsage(count=1, size="1024x1024", quality="medium")
    )
    edit = registry.price(
        provider="openai", model="gpt-image-1", usage=usage, at=NOW, raw_usage=OPENAI_IMAGE_EDIT
    )
    assert isinstance(edit, Unpriced) and "323 input image tokens" in edit.reason
    generated = OPENAI_IMAGE_EDIT.model_copy(
        update={"input_tokens_details": {"image_tokens": 0, "text_tokens": 373}}
    )
    priced = registry.price(
        provider="openai", model="gpt-image-1", usage=usage, at=NOW, raw_usage=generated
    )
    assert isinstance(priced, Priced) and priced == registry.price(
        provider="openai", model="gpt-image-1", usage=usage, at=NOW
    )


@pytest.mark.parametrize(
    ("provider", "model", "medium"),
    [("openai", "gpt-image-1.5", "image"), ("google", "gemini-live-2.5-flash", "video")],
)
def test_image_and_video_tokens_priced_apart_by_the_data_leave_a_call_unpriced(
    registry: PricingRegistry, provider: str, model: str, medium: str
) -> None:
    raw = {
        "prompt_token_count": 1040,
        "candidates_token_count": 20,
        "prompt_tokens_details": [
            {"modality": "TEXT", "token_count": 40},
            {"modality": medium.upper(), "token_count": 1000},
        ],
    }
    if provider == "openai":
        raw = {"input_tokens": 1040, "input_tokens_details": {"image_tokens": 1000}}
    usage = normalize_usage(input_tokens=1040)
    priced = registry.price(provider=provider, model=model, usage=usage, at=NOW, raw_usage=raw)
    assert isinstance(priced, Unpriced) and f"1000 input {medium} tokens" in priced.reason


def test_the_service_tier_is_read_from_the_answer_or_its_usage() -> None:
    assert service_tiers({"service_tier": "priority", "usage": OPENAI_TEXT}) == {
        "service_tier": "priority"
    }
    assert service_tiers({"usage": {"input_tokens": 1, "service_tier": "standard"}}) == {
        "service_tier": "standard"
    }
    assert service_tiers(OPENAI_TEXT) == {}
    assert service_tiers(anthropic_usage(service_tier="batch", speed="fast")) == {
        "service_tier": "batch",
        "speed": "fast",
    }


@pytest.mark.parametrize(("tier", "priced"), [("default", True), ("priority", False)])
def test_a_service_tier_priced_apart_leaves_the_call_unpriced(
    registry: PricingRegistry, tier: str, priced: bool
) -> None:
    # gpt-4o's priority tier: $4.25 / $17 per million against $2.50 / $10.
    answer = {"service_tier": tier, "usage": OPENAI_TEXT}
    usage = usage_from_response(OPENAI_TEXT)
    result = registry.price(
        provider="openai", model="gpt-4o", usage=usage, at=NOW, raw_usage=answer
    )
    if priced:
        assert result == registry.price(provider="openai", model="gpt-4o", usage=usage, at=NOW)
    else:
        assert isinstance(result, Unpriced) and "the 'priority' service tier" in result.reason


def anthropic_usage(**served: str) -> AnthropicUsage:
    """Anthropic's usage of a plain text call, served as ``served`` says."""
    return AnthropicUsage.model_validate({"input_tokens": 1000, "output_tokens": 500, **served})


@pytest.mark.parametrize(
    ("model", "served", "told"),
    [
        # Message Batches at half the standard rates: a model genai-prices prices in
        # batches, and one it has no batch price for (Anthropic's batches are half for all)
        ("claude-sonnet-4-5", {"service_tier": "batch"}, "the 'batch' service tier"),
        ("claude-3-haiku", {"service_tier": "batch"}, "the 'batch' service tier"),
        # Priority Tier: billed by the capacity committed to, not at the list price
        ("claude-sonnet-4-5", {"service_tier": "priority"}, "the 'priority' service tier"),
        # fast mode: Opus 4.8 at 2x (in the data), Opus 4.6 at 6x (not in it)
        ("claude-opus-4-8", {"speed": "fast"}, "the 'fast' speed"),
        ("claude-opus-4-6", {"speed": "fast"}, "the 'fast' speed"),
        # US-only inference at 1.1x (Opus 4.6 on); "global", the default, at the list price
        ("claude-opus-4-6", {"inference_geo": "us"}, "the 'us' inference geo"),
    ],
)
def test_an_anthropic_call_not_served_at_the_standard_rates_is_left_unpriced(
    registry: PricingRegistry, model: str, served: dict[str, str], told: str
) -> None:
    raw = anthropic_usage(**served)
    result = registry.price(
        provider="anthropic", model=model, usage=usage_from_response(raw), at=NOW, raw_usage=raw
    )
    assert isinstance(result, Unpriced) and told in result.reason
    assert "rather than at a wrong rate" in result.reason


def test_an_anthropic_call_served_at_the_standard_rates_is_priced_so(
    registry: PricingRegistry,
) -> None:
    raw = anthropic_usage(service_tier="standard", speed="standard", inference_geo="global")
    usage = usage_from_response(raw)
    result = registry.price(
        provider="anthropic", model="claude-opus-4-8", usage=usage, at=NOW, raw_usage=raw
    )
    assert isinstance(result, Priced)
    assert result == registry.price(
        provider="anthropic", model="claude-opus-4-8", usage=usage, at=NOW
    )
