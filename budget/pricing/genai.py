"""Layer c: genai-prices, pinned, loaded lazily, queried with the time of the call.

Uses its bundled data through a private ``DataSnapshot`` (never the network updater and
never the process-wide custom snapshot), so what another library sets cannot change ours.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from functools import cache, lru_cache
from importlib.metadata import version as _dist_version
from typing import TYPE_CHECKING, Any

from budget.pricing.rates import RateCard, Steps, divided_cost
from budget.pricing.supplement import PROVIDER_ALIASES
from budget.usage import TIER_FIELDS

if TYPE_CHECKING:
    from genai_prices.data_snapshot import DataSnapshot
    from genai_prices.types import ModelInfo, Provider

__all__ = [
    "canonical_model",
    "canonical_provider",
    "card_for",
    "data_version",
    "find_model",
    "loaded",
    "misspelled_provider",
    "provider_ids",
    "provider_models",
    "providers_serving",
    "snapshot",
]

# genai-prices price key -> our token classes it prices (the first key present wins).
_TOKEN_KEYS: Mapping[str, tuple[str, ...]] = {
    "input_uncached": ("input_mtok",),
    "input_cache_read": ("cache_read_mtok", "input_mtok"),
    "input_cache_write": ("cache_write_mtok", "input_mtok"),
    "output_text": ("output_mtok",),
    "output_reasoning": ("output_reasoning_mtok", "output_mtok"),
    "embedding_tokens": ("input_mtok",),
}
# (medium, genai-prices key of its token rate, the text rate it would otherwise get)
# (what, its price key, the key of the class ``Usage`` counts it in: None for none)
_MEDIA_KEYS = (
    ("input audio", "input_audio_mtok", "input_mtok"),
    ("input image", "input_image_mtok", "input_mtok"),
    ("input video", "input_video_mtok", "input_mtok"),
    ("output audio", "output_audio_mtok", "output_mtok"),
    ("output image", "output_image_mtok", "output_mtok"),
    ("1-hour cache write", "cache_write_1h_mtok", "cache_write_mtok"),
    ("web search", "web_searches_kcount", None),
    ("file search", "storage_searches_kcount", None),
)
# A condition genai-prices prices a variant under -> what the answer says of it
# (``budget.usage.service_tiers``), where the two differ: Anthropic's usage.service_tier
# is "batch" for a call of a message batch.
_ANSWER_SAYS = {("processing", "batch"): ("service_tier", "batch")}
# Anthropic never bills these at the standard rates, whatever the data holds: batches at
# half for every model (genai-prices has batch prices only for the models sold on
# 2026-10-14, and from that day), Priority Tier by the capacity committed to, fast mode
# at 2x to 6x (genai-prices has it for Opus 4.8 on, not 4.6 and 4.7 at 6x), US-only
# inference at 1.1x (the models that take it; genai-prices has no such price).
_ANTHROPIC_TIERS = frozenset(
    {
        ("service_tier", "batch"),
        ("service_tier", "priority"),
        ("speed", "fast"),
        ("inference_geo", "us"),
    }
)
# Groq bills Whisper for at least 10 seconds per request (genai-prices does the same).
_MIN_AUDIO_SECONDS = {("groq", "whisper-large-v3"), ("groq", "whisper-large-v3-turbo")}


@cache
def snapshot() -> DataSnapshot:
    from genai_prices.data import providers
    from genai_prices.data_snapshot import DataSnapshot

    return DataSnapshot(providers=providers, from_auto_update=False)


def loaded() -> bool:
    return snapshot.cache_info().currsize > 0


@cache
def data_version() -> str:
    return f"genai-prices {_dist_version('genai-prices')}"


@lru_cache(maxsize=1024)
def canonical_provider(name: str) -> str:
    """ "OpenAI" -> "openai", "xAI" -> "x-ai"; unknown names come back lower-cased."""
    key = name.strip().lower()
    if key in PROVIDER_ALIASES:
        return PROVIDER_ALIASES[key]
    from genai_prices.data_snapshot import find_provider_by_id

    found = find_provider_by_id(snapshot().providers, key)
    return found.id if found is not None else key


# Google's resource names for a model (the Gemini API's "models/gemini-2.5-pro", Vertex
# AI's "publishers/google/models/..." and "projects/p/locations/l/publishers/google/models/
# ..."), which its SDK accepts and no price data spells. Not other "models/" paths:
# Fireworks' "accounts/fireworks/models/..." ids are genai-prices' own.
_GOOGLE_RESOURCE = re.compile(r"(?:projects/[^/]+/locations/[^/]+/)?(?:publishers/google/)?models/")


@lru_cache(maxsize=1024)
def canonical_model(name: str) -> str:
    """A model's key: "GPT-4o" -> "gpt-4o", "models/gemini-2.0-flash" -> "gemini-2.0-flash".
    Every pricing layer (genai-prices too) finds a model by this key, and spend is counted,
    policies matched and filters applied by it, so a name is one model however a caller
    cases it or whether it names it by Google's resource path (the recorded event keeps the
    caller's spelling). ``lower()``, not ``casefold()``: the key must be exactly what
    prices are found by, and genai-prices lower-cases; casefold would also merge names no
    price lookup merges ("ß" and "ss"). No provider serves two models whose names differ
    only in case. A name of only spaces (or only a resource path) has the empty key: no
    model."""
    key = name.strip().lower()
    # Until none is left, so that a key is its own key ("models/ models/x" is "x").
    while found := _GOOGLE_RESOURCE.match(key):
        key = key[found.end() :].strip()
    return key


def misspelled_provider(name: str) -> str | None:
    """The known provider ``name`` looks like a typo of ("opnai": "openai"); None when it
    is known in any spelling, or resembles none (a provider of one's own, "acme")."""
    key = canonical_provider(name)
    known = provider_ids()
    if key in known:
        return None
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
    return close[0] if close else None


def find_model(provider: str | None, model: str) -> tuple[Provider, ModelInfo] | None:
    try:
        return snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        return None


def _steps(value: Any) -> Steps | None:
    from genai_prices.types import TieredPrices

    if value is None:
        return None
    if isinstance(value, TieredPrices):
        return ((-1, value.base), *((tier.start, tier.price) for tier in value.tiers))
    return ((-1, value),)


def _listed_free(model: ModelInfo) -> bool:
    """Whether a model listed with no prices at all is free by the data's own word (an
    OpenRouter ":free" id, "(free)" in its name, "free of charge"); others are listed
    without a price (Cerebras' qwen-3-coder-480b, Lyria), so unpriced, never $0."""
    return (
        model.id.endswith(":free")
        or "(free)" in (model.name or "").lower()
        or "free of charge" in (model.description or "").lower()
    )


def card_for(provider: Provider, model: ModelInfo, at: datetime) -> tuple[RateCard, bool]:
    """The model's price at ``at``; the flag says whether it may be cached for the day."""
    from genai_prices.types import ModelPrice, StartDateConstraint, TimeOfDateConstraint

    prices = model.get_prices(at)
    effective_from = None
    cacheable = True
    if not isinstance(model.prices, ModelPrice):
        cacheable = not any(isinstance(c.constraint, TimeOfDateConstraint) for c in model.prices)
        for conditional in reversed(model.prices):
            constraint = conditional.constraint
            if constraint is None or constraint.active(at):
                if isinstance(constraint, StartDateConstraint):
                    effective_from = constraint.start_date
                break
    raw = {k: v for k, v in prices.__dict__.items() if not k.startswith("_") and v is not None}
    tokens: dict[str, Steps] = {}
    for cls, keys in _TOKEN_KEYS.items():
        steps = next((s for key in keys if (s := _steps(raw.get(key))) is not None), None)
        if steps is not None:
            tokens[cls] = steps
        elif not raw and _listed_free(model):
            tokens[cls] = ((-1, Decimal(0)),)
    # What a model prices apart (a rate that differs from the one of the class counted in).
    modal = frozenset(
        medium
        for medium, key, counted_in in _MEDIA_KEYS
        if raw.get(key) is not None
        and raw.get(key) != (raw.get(counted_in) if counted_in else None)
    )
    # How a call may be served at prices of its own (OpenAI's priority and flex tiers,
    # Anthropic's batches and fast mode), in force now, as the answer says it.
    service_tiers = frozenset(
        _ANSWER_SAYS.get(condition, condition)
        for variant in model.price_variants or ()
        if len(variant.when) == 1
        and (variant.constraint is None or variant.constraint.active(at))
        and any(v is not None for k, v in variant.prices.__dict__.items() if not k.startswith("_"))
        for condition in variant.when.items()
        if _ANSWER_SAYS.get(condition, condition)[0] in TIER_FIELDS
    )
    if provider.id == "anthropic":
        service_tiers |= _ANTHROPIC_TIERS
    hourly = raw.get("audio_hours", raw.get("input_audio_hours"))
    per_k_requests = raw.get("requests_kcount")
    card = RateCard(
        provider=provider.id,
        model=model.id,
        layer="genai-prices",
        data_version=data_version(),
        effective_from=effective_from,
        tokens=tokens,
        audio=(hourly, 3600) if isinstance(hourly, Decimal) else None,
        audio_min=Decimal(10) if (provider.id, model.id) in _MIN_AUDIO_SECONDS else None,
        per_request=(
            divided_cost(Decimal(1), per_k_requests, 1000)
            if isinstance(per_k_requests, Decimal)
            else None
        ),
        modal=modal,
        service_tiers=service_tiers,
    )
    return card, cacheable


def provider_ids() -> list[str]:
    return sorted(p.id for p in snapshot().providers)


def provider_models(provider_id: str) -> list[str]:
    for provider in snapshot().providers:
        if provider.id == provider_id:
            return sorted(m.id for m in provider.models)
    return []


@lru_cache(maxsize=256)
def providers_serving(url: str) -> tuple[str, ...]:
    """The providers whose API ``url`` is, by their ``api_pattern`` (an OpenAI client's
    ``base_url`` pointed at Groq: ``("groq",)``); none for an address no provider has."""
    return tuple(
        provider.id
        for provider in snapshot().providers
        if provider.api_pattern and re.match(provider.api_pattern, url)
    )
