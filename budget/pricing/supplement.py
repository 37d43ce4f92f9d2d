"""The project's own price data (layer b): what genai-prices lacks.

Per-image prices (OpenAI pricing page, per image by size and quality), Whisper's
per-minute audio price, ``ministral-3b-latest`` (Mistral's alias, which moved to a new
model on 2 Dec 2025), aliases for model ids that genai-prices cannot place (or places on
the wrong model) on its own, and provider spellings. Every alias target is checked against
genai-prices in the tests; entries of one model are newest first (the first one in force
on the day of the call wins).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from functools import cache

from budget.pricing.rates import RateCard, flat_with_fallbacks

__all__ = [
    "MODEL_ALIASES",
    "PROVIDER_ALIASES",
    "SUPPLEMENT",
    "SUPPLEMENT_VERSION",
    "SupplementEntry",
    "supplement_card",
]

SUPPLEMENT_VERSION = "supplement 2026-11"

D = Decimal


@dataclass(frozen=True, eq=False)
class SupplementEntry:
    provider: str
    model: str
    effective_from: date
    mtok: Mapping[str, Decimal] = field(default_factory=dict)  # token class -> USD / 1M
    audio: tuple[Decimal, int] | None = None  # (USD, per this many seconds)
    images: Mapping[tuple[str, str], Decimal] = field(default_factory=dict)  # (size, quality)
    modal: frozenset[str] = frozenset()  # as ``RateCard.modal``: media priced apart


def _grid(
    sizes: Mapping[str, tuple[str, ...]], prices: Mapping[str, tuple[str, ...]]
) -> dict[tuple[str, str], Decimal]:
    """{quality: prices in the order of that quality's sizes} -> {(size, quality): USD}."""
    return {
        (size, quality): D(price)
        for quality, row in prices.items()
        for size, price in zip(sizes[quality], row, strict=True)
    }


_SQUARE_TALL_WIDE = ("1024x1024", "1024x1792", "1792x1024")
_GPT_IMAGE_SIZES = ("1024x1024", "1024x1536", "1536x1024")

SUPPLEMENT: tuple[SupplementEntry, ...] = (
    SupplementEntry(
        "openai",
        "dall-e-2",
        date(2022, 11, 3),
        images=_grid(
            {"standard": ("256x256", "512x512", "1024x1024")},
            {"standard": ("0.016", "0.018", "0.020")},
        ),
    ),
    SupplementEntry(
        "openai",
        "dall-e-3",
        date(2023, 11, 6),
        images=_grid(
            {"standard": _SQUARE_TALL_WIDE, "hd": _SQUARE_TALL_WIDE},
            {"standard": ("0.040", "0.080", "0.080"), "hd": ("0.080", "0.120", "0.120")},
        ),
    ),
    SupplementEntry(
        "openai",
        "gpt-image-1",
        date(2025, 4, 23),
        # OpenAI bills its tokens (image output at $40 per million, as genai-prices has
        # it); the per-image prices, its approximations, price a call whose usage counts
        # no output tokens (a pre-call estimate, ``calculate_image_cost``).
        mtok={"input_uncached": D("5"), "input_cache_read": D("1.25"), "output_text": D("40")},
        # The images given to edit are input tokens at $10 per million, not the text's $5.
        modal=frozenset({"input image"}),
        images=_grid(
            {q: _GPT_IMAGE_SIZES for q in ("low", "medium", "high")},
            {
                "low": ("0.011", "0.016", "0.016"),
                "medium": ("0.042", "0.063", "0.063"),
                "high": ("0.167", "0.25", "0.25"),
            },
        ),
    ),
    SupplementEntry("openai", "whisper-1", date(2023, 3, 1), audio=(D("0.006"), 60)),
    # Mistral's ``-latest`` alias: ministral-3b-2512 from 2 Dec 2025 (as genai-prices has
    # ministral-8b-latest), ministral-3b-2410 before; rates as genai-prices has those two.
    SupplementEntry(
        "mistral",
        "ministral-3b-latest",
        date(2025, 12, 2),
        mtok={"input_uncached": D("0.1"), "input_cache_read": D("0.01"), "output_text": D("0.1")},
    ),
    SupplementEntry(
        "mistral",
        "ministral-3b-latest",
        date(2024, 10, 16),
        mtok={"input_uncached": D("0.04"), "output_text": D("0.04")},
    ),
)

# Model ids genai-prices cannot resolve (or resolves to another provider's price when no
# provider is given) -> (provider, the id genai-prices knows). Checked in the tests.
MODEL_ALIASES: Mapping[str, tuple[str, str]] = {
    "text-embedding-3-small": ("openai", "text-embedding-3-small"),
    "text-embedding-3-large": ("openai", "text-embedding-3-large"),
    "text-embedding-ada-002": ("openai", "text-embedding-ada-002"),
    "llama-3.3-70b-versatile": ("groq", "llama-3.3-70b-versatile"),
    "llama-3.1-8b-instant": ("groq", "llama-3.1-8b-instant"),
    "llama3-70b-8192": ("groq", "llama3-70b-8192"),
    "llama3-8b-8192": ("groq", "llama3-8b-8192"),
    "mixtral-8x7b-32768": ("groq", "mixtral-8x7b-32768"),
    "gemma2-9b-it": ("groq", "gemma2-9b-it"),
    "pixtral-12b-2409": ("mistral", "pixtral-12b"),
    "ministral-3b-2410": ("mistral", "ministral-3b"),
    # genai-prices would match Gemini 1.5 Flash's price (twice as much), for the dated
    # and experimental ids of 1.5 Flash-8B too.
    "gemini-1.5-flash-8b": ("google", "gemini-flash-1.5-8b"),
    "gemini-1.5-flash-8b-001": ("google", "gemini-flash-1.5-8b"),
    "gemini-1.5-flash-8b-latest": ("google", "gemini-flash-1.5-8b"),
    "gemini-1.5-flash-8b-exp-0827": ("google", "gemini-flash-1.5-8b"),
    "gemini-1.5-flash-8b-exp-0924": ("google", "gemini-flash-1.5-8b"),
    # Gemini 2.0 Pro never had a published paid price of its own (an experimental model,
    # free in AI Studio; Vertex AI billed it at 2.5 Pro's rates, and ``gemini-2.0-pro-exp``
    # itself came to serve 2.5 Pro): priced as Gemini 2.5 Pro, long-context tier included.
    "gemini-2.0-pro": ("google", "gemini-2.5-pro"),
    "gemini-2.0-pro-exp": ("google", "gemini-2.5-pro"),
    "gemini-2.0-pro-exp-02-05": ("google", "gemini-2.5-pro"),
}

# Spellings of provider names -> genai-prices provider id (lower-cased keys).
PROVIDER_ALIASES: Mapping[str, str] = {
    "xai": "x-ai",
    "x.ai": "x-ai",
    "grok": "x-ai",
    "gemini": "google",
    "google-gla": "google",
    "google-vertex": "google",
    "vertex": "google",
    "vertex_ai": "google",
    "vertexai": "google",
    "mistralai": "mistral",
    "mistral-ai": "mistral",
    "claude": "anthropic",
}


@cache
def supplement_card(entry: SupplementEntry) -> RateCard:
    return RateCard(
        provider=entry.provider,
        model=entry.model,
        layer="supplement",
        data_version=SUPPLEMENT_VERSION,
        effective_from=entry.effective_from,
        tokens=flat_with_fallbacks(entry.mtok),
        audio=entry.audio,
        images=entry.images,
        modal=entry.modal,
    )
