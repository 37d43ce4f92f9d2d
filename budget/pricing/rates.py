"""A resolved price ("rate card") for one model on one day, and the hot-path cost maths.

All money is ``Decimal``; token rates are kept in USD per million tokens and the sum is
shifted by 10^-6 once, which is exact. A divided price (audio per minute or hour, requests
per thousand) goes through ``divided_cost``: exact, or rounded once to ``COST_PLACES``.
Usage classes without a rate make the call *unpriced* rather than free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Literal

from budget.pricing.results import Priced, Unpriced
from events.usage import PriceSource, Usage

__all__ = [
    "COST_PLACES",
    "PRICED_APART",
    "TOKEN_CLASSES",
    "Layer",
    "RateCard",
    "Steps",
    "Tier",
    "divided_cost",
    "flat_with_fallbacks",
]

PRICED_APART = "priced apart"
"""In the reason a call is unpriced for what its event's usage cannot tell (audio or image
tokens, 1-hour cache writes, web searches): ``budget reprice`` leaves such calls alone."""

TOKEN_CLASSES = (
    "input_uncached",
    "input_cache_read",
    "input_cache_write",
    "output_text",
    "output_reasoning",
    "embedding_tokens",
)
# A class without its own rate is billed at this one's (as genai-prices does).
_FALLBACK = {
    "input_cache_read": "input_uncached",
    "input_cache_write": "input_uncached",
    "embedding_tokens": "input_uncached",
    "output_reasoning": "output_text",
}

Layer = Literal["override", "supplement", "genai-prices"]
Steps = Sequence[tuple[int, Decimal]]
"""A token rate as (applies above this many input tokens, USD per million); first is -1."""

_ZERO = Decimal(0)
_EXACT_BELOW = 10**27
_EXTRAS_PREC = 100


_IMAGE_SOURCES_KEPT = 256
"""Price sources a card keeps per image size and quality: a flat image price (an
override's) prices whatever size a call names, so without a bound each new one a host
posts would be kept for good."""

COST_PLACES = 12
"""Decimal places (10^-12 USD) a divided price's cost is rounded to when not exact."""


def divided_cost(quantity: Decimal, price: Decimal, per: int) -> Decimal:
    """``quantity`` units at ``price`` USD per ``per`` units: the exact value when it has
    at most ``COST_PLACES`` decimal places, else that value rounded once, half to even,
    to ``COST_PLACES`` (never the 28 digits of the default context, nor rounded twice)."""
    exact = Fraction(quantity) * Fraction(price) / per
    scaled = exact * 10**COST_PLACES
    if scaled.denominator == 1:  # terminates within COST_PLACES: divide exactly
        numerator, denominator = exact.numerator, exact.denominator
        with localcontext(prec=len(str(abs(numerator))) + COST_PLACES + 2):
            return Decimal(numerator) / Decimal(denominator)
    rounded = round(scaled)  # Fraction rounds half to even
    with localcontext(prec=len(str(abs(rounded))) + 2):
        return Decimal(rounded).scaleb(-COST_PLACES)


def flat_with_fallbacks(mtok: Mapping[str, Decimal]) -> dict[str, Steps]:
    """Flat per-million token rates, filling missing classes from their fallback class."""
    rates = dict(mtok)
    for cls, fallback in _FALLBACK.items():
        if cls not in rates and fallback in rates:
            rates[cls] = rates[fallback]
    return {cls: ((-1, rate),) for cls, rate in rates.items() if cls in TOKEN_CLASSES}


@dataclass(frozen=True, slots=True)
class Tier:
    above: int
    scaled: tuple[int, ...]  # per TOKEN_CLASSES: USD per token / unit; 0 if missing
    unit: Decimal  # 10**-(6 + decimal places of the rates)
    missing: tuple[str, ...]  # token classes with no rate
    rates_mtok: Mapping[str, Decimal]
    source: PriceSource


class RateCard:
    """Everything needed to price usage of one model: no lookups left on the hot path."""

    __slots__ = (
        "_image_sources",
        "audio",
        "audio_min",
        "data_version",
        "effective_from",
        "image_flat",
        "images",
        "layer",
        "modal",
        "model",
        "per_request",
        "provider",
        "service_tiers",
        "single",
        "tiers",
    )

    def __init__(
        self,
        *,
        provider: str,
        model: str,
        layer: Layer,
        data_version: str,
        effective_from: date | None,
        tokens: Mapping[str, Steps],
        audio: tuple[Decimal, int] | None = None,
        audio_min: Decimal | None = None,
        images: Mapping[tuple[str, str], Decimal] | None = None,
        image_flat: Decimal | None = None,
        per_request: Decimal | None = None,
        modal: frozenset[str] = frozenset(),
        service_tiers: frozenset[tuple[str, str]] = frozenset(),
    ) -> None:
        """``modal``: the media (``"input audio"``, ``"output image"``, ...) whose tokens
        this model prices apart from text tokens; ``service_tiers``: how a call may be
        served at other prices, as its answer says it (``budget.usage.service_tiers``:
        ``("service_tier", "priority")``, ``("speed", "fast")``)."""
        self.provider, self.model, self.layer = provider, model, layer
        self.modal, self.service_tiers = modal, service_tiers
        self.data_version, self.effective_from = data_version, effective_from
        self.audio, self.audio_min, self.per_request = audio, audio_min, per_request
        self.images = dict(images or {})
        self.image_flat = image_flat
        self._image_sources: dict[tuple[int, str, str], PriceSource] = {}
        starts = sorted({above for steps in tokens.values() for above, _ in steps} | {-1})
        self.tiers = tuple(self._tier(above, tokens) for above in starts)
        self.single = self.tiers[0] if len(self.tiers) == 1 else None

    @property
    def prices_anything(self) -> bool:
        """False for a model listed without any rate we model (e.g. per page): every
        usage of it would be unpriced."""
        has_tokens = any(tier.rates_mtok for tier in self.tiers)
        extras = (self.audio, self.per_request, self.image_flat)
        return has_tokens or bool(self.images) or any(x is not None for x in extras)

    def _tier(self, above: int, tokens: Mapping[str, Steps]) -> Tier:
        rates = {
            cls: max((s for s in tokens[cls] if s[0] <= above), key=lambda s: s[0])[1]
            for cls in TOKEN_CLASSES
            if tokens.get(cls)
        }
        per_unit = {cls: rate.scaleb(-6) for cls, rate in rates.items()}
        # Integer maths on the hot path: every rate as an int times 10**exponent USD/token.
        places = max((-int(r.as_tuple().exponent) for r in rates.values()), default=0)
        places = max(places, 0)
        if self.audio is not None:
            per_unit["audio_seconds"] = divided_cost(Decimal(1), *self.audio)
        if self.per_request is not None:
            per_unit["per_request"] = self.per_request
        return Tier(
            above=above,
            scaled=tuple(int(rates.get(cls, _ZERO).scaleb(places)) for cls in TOKEN_CLASSES),
            unit=Decimal(1).scaleb(-6 - places),
            missing=tuple(cls for cls in TOKEN_CLASSES if cls not in rates),
            rates_mtok=rates,
            source=PriceSource(
                layer=self.layer,
                data_version=self.data_version,
                effective_from=self.effective_from,
                rates=per_unit,
            ),
        )

    def apart(
        self, media: Mapping[str, int], tiers: Mapping[str, str] | None = None
    ) -> Unpriced | None:
        """Why a call with these (``budget.usage.modality_tokens``) or served so
        (``tiers``: ``budget.usage.service_tiers``) has no price here, when the model
        prices any of them apart: ``Usage`` counts them as text tokens or cache writes, or
        not at all, and an event has no service tier, so its rates would be wrong (audio
        input at 3x, 1-hour cache writes at 2x the input rate, web searches at $10 per
        thousand, OpenAI's file searches at $2.50, its priority tier at 1.7x and flex at
        half the standard rates, Anthropic's batches at half, fast mode at 2x to 6x and
        US-only inference at 1.1x)."""
        apart = [
            f"{count} {medium}es" if medium.endswith("search") else f"{count} {medium} tokens"
            for medium, count in media.items()
            if medium in self.modal
        ]
        apart.extend(
            f"the {value!r} {field.replace('_', ' ')}"
            for field, value in (tiers or {}).items()
            if (field, value) in self.service_tiers
        )
        if not apart:
            return None
        return self._unpriced(
            f"{', '.join(apart)} ({PRICED_APART} from what usage events count: recorded"
            " unpriced rather than at a wrong rate)"
        )

    def _unpriced(self, what: str) -> Unpriced:
        return Unpriced(
            f"model {self.model!r} (provider {self.provider!r}) has no price for {what} "
            f"in layer {self.layer} ({self.data_version})"
        )

    def cost(self, u: Usage) -> Priced | Unpriced:
        tier = self.single
        if tier is None:  # tiered by total input tokens (e.g. Gemini above 200k)
            total = u.input_uncached + u.input_cache_read + u.input_cache_write
            total += u.embedding_tokens
            tier = self.tiers[0]
            for candidate in self.tiers[1:]:
                if total <= candidate.above:
                    break
                tier = candidate
        if tier.missing:
            for cls in tier.missing:
                if getattr(u, cls):
                    return self._unpriced(f"{cls} (usage {cls}={getattr(u, cls)})")
        ri, rr, rw, ro, rz, re = tier.scaled
        scaled = (
            u.input_uncached * ri
            + u.input_cache_read * rr
            + u.input_cache_write * rw
            + u.output_text * ro
            + u.output_reasoning * rz
            + u.embedding_tokens * re
        )
        if scaled < _EXACT_BELOW:
            cost = Decimal(scaled) * tier.unit
        else:  # beyond the context's 28 digits: widen it so the result stays exact
            with localcontext(prec=len(str(scaled)) + 2):
                cost = Decimal(scaled) * tier.unit
        if u.audio_seconds or u.images is not None or self.per_request is not None:
            return self._extras(u, tier, cost)
        return Priced(cost, tier.source)

    def _extras(self, u: Usage, tier: Tier, cost: Decimal) -> Priced | Unpriced:
        # Sums and products of bounded exact values: wide enough that nothing rounds here.
        with localcontext(prec=_EXTRAS_PREC):
            return self._extras_exact(u, tier, cost)

    def _extras_exact(self, u: Usage, tier: Tier, cost: Decimal) -> Priced | Unpriced:
        source = tier.source
        if u.audio_seconds:
            if self.audio is None:
                return self._unpriced(f"audio_seconds (usage {u.audio_seconds})")
            seconds = u.audio_seconds
            if self.audio_min is not None and seconds < self.audio_min:
                seconds = self.audio_min
            cost += divided_cost(seconds, *self.audio)
        # An answer that counts the images' tokens (OpenAI's GPT Image models, billed by
        # token: the per-image figures approximate them) is priced by them, above; a
        # per-image price is for one that counts none (DALL-E's, a pre-call estimate).
        if u.images is not None and not (u.output_text or u.output_reasoning):
            key = (u.images.size.strip().lower(), u.images.quality.strip().lower())
            per_image = self.images.get(key, self.image_flat)
            if per_image is None:
                offered = ", ".join(f"{s} {q}" for s, q in sorted(self.images)) or "none"
                return self._unpriced(
                    f"images of size {key[0]} quality {key[1]} (priced: {offered})"
                )
            cost += per_image * u.images.count
            source = self._image_source(tier, key, per_image)
        if self.per_request is not None:
            cost += self.per_request
        return Priced(cost, source)

    def _image_source(self, tier: Tier, key: tuple[str, str], per_image: Decimal) -> PriceSource:
        cache_key = (tier.above, *key)
        source = self._image_sources.get(cache_key)
        if source is None:
            rates = {**tier.source.rates, "images": per_image}
            source = tier.source.model_copy(update={"rates": rates})
            if len(self._image_sources) >= _IMAGE_SOURCES_KEPT:
                self._image_sources.clear()
            self._image_sources[cache_key] = source
        return source
