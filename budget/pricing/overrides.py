"""Custom prices (layer a): negotiated rates, private deployments, corrections."""

from __future__ import annotations

import difflib
from datetime import date
from decimal import Decimal
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from budget.pricing import genai
from budget.pricing.rates import TOKEN_CLASSES, RateCard, flat_with_fallbacks
from budget.pricing.supplement import MODEL_ALIASES, SUPPLEMENT
from events.limits import NAME_MAX

__all__ = [
    "MAX_RATES",
    "RATE_CLASSES",
    "RATE_PLACES",
    "PriceOverride",
    "RateClass",
    "misspelled_model",
    "override_card",
]

RateClass = Literal[
    "input_uncached",
    "input_cache_read",
    "input_cache_write",
    "output_text",
    "output_reasoning",
    "embedding_tokens",
    "audio_seconds",
    "images",
]
RATE_CLASSES: tuple[str, ...] = (*TOKEN_CLASSES, "audio_seconds", "images")

RATE_PLACES = 20
"""Digits after the point an override's rate may have (genai-prices' finest has 18): the
costs it makes stay exact and within the event contract's 40 places (a token rate is
shifted by 10^-6); with more, a rate was rounded to 28 digits unsaid, or every call's
event was refused."""
MAX_RATES: dict[str, Decimal] = {
    "tokens": Decimal(10_000),  # USD per million tokens; the dearest model's is $600
    "audio_seconds": Decimal(100),  # USD per second
    "images": Decimal(1_000),  # USD per image
}
"""Above these an override's rate is taken for a mistake of unit (a price per billion
tokens, or in cents), never charged."""
_UNIT = {"tokens": "per million tokens", "audio_seconds": "per second", "images": "per image"}

Rate = Annotated[Decimal, Field(ge=0, allow_inf_nan=False, decimal_places=RATE_PLACES)]


class PriceOverride(BaseModel):
    """A price that wins over every other layer for one model inside its effective window.

    ``rates``: token classes in USD per million tokens, ``audio_seconds`` in USD per second,
    ``images`` in USD per image (any size/quality). Unlisted classes fall back like the
    base data does: cache reads/writes and embeddings to ``input_uncached``, reasoning to
    ``output_text``; anything still missing makes such usage *unpriced*, never $0.
    The window is in UTC days: ``effective_from`` <= day < ``effective_to`` (exclusive).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str = Field(min_length=1, max_length=100, description='e.g. "openai"')
    model: str = Field(min_length=1, max_length=NAME_MAX, description="model id as sent by the app")
    rates: dict[RateClass, Rate] = Field(min_length=1)
    effective_from: date
    effective_to: date | None = Field(default=None, description="first day it no longer applies")
    note: str | None = Field(default=None, max_length=500)

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, provider: str) -> str:
        mistaken = genai.misspelled_provider(provider)
        if mistaken is not None:
            raise ValueError(
                f"unknown provider {provider!r}: did you mean {mistaken!r}? (an override"
                " applies to the calls of the provider it names; a name the price data does"
                " not know is taken for a provider of your own only if it resembles none)"
            )
        return provider

    @field_validator("rates")
    @classmethod
    def _plausible_rates(cls, rates: dict[str, Decimal]) -> dict[str, Decimal]:
        for rate_class, rate in rates.items():
            kind = rate_class if rate_class in MAX_RATES else "tokens"
            if rate > MAX_RATES[kind]:
                raise ValueError(
                    f"{rate_class} {rate} is above any real price (at most"
                    f" {MAX_RATES[kind]} USD {_UNIT[kind]}); rates are USD per million tokens,"
                    " audio_seconds USD per second, images USD per image"
                )
        return rates

    @model_validator(mode="after")
    def _known_model(self) -> Self:
        mistaken = misspelled_model(self.provider, self.model)
        if mistaken is not None:
            raise ValueError(
                f"unknown model {self.model!r} of provider {self.provider!r}: did you mean"
                f" {mistaken!r}? (an override applies to the calls that name its model; a"
                " name the price data does not know is taken for a model of your own only"
                " if it resembles none of the provider's)"
            )
        return self

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.effective_to is not None and self.effective_to <= self.effective_from:
            raise ValueError(
                f"effective_to ({self.effective_to}) must be after effective_from "
                f"({self.effective_from}) for the {self.provider}/{self.model} override"
            )
        return self

    def active_on(self, day: date) -> bool:
        return self.effective_from <= day and (self.effective_to is None or day < self.effective_to)


def misspelled_model(provider: str, model: str) -> str | None:
    """The model of ``provider`` that ``model`` looks like a typo of ("gpt-4o-mnii":
    "gpt-4o-mini"); None when a pricing layer knows it (a dated id too), or it resembles
    none of the provider's (a deployment of one's own, "my-gpt-4o")."""
    pid = genai.canonical_provider(provider)
    name = genai.canonical_model(model)
    known = set(genai.provider_models(pid))
    known |= {entry.model for entry in SUPPLEMENT if entry.provider == pid}
    known |= {alias for alias, (owner, _) in MODEL_ALIASES.items() if owner == pid}
    if name in known or genai.find_model(pid, name) is not None:
        return None
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.9)
    # The id with more after it ("gpt-4o-mini-2") names a variant of one's own.
    if not close or name.startswith(f"{close[0]}-"):
        return None
    return close[0]


def override_card(override: PriceOverride, provider: str) -> RateCard:
    """``provider`` is the override's provider in canonical spelling."""
    per_second = override.rates.get("audio_seconds")
    return RateCard(
        provider=provider,
        model=override.model,
        layer="override",
        data_version=f"override {override.effective_from.isoformat()}",
        effective_from=override.effective_from,
        tokens=flat_with_fallbacks(dict(override.rates.items())),
        audio=(per_second, 1) if per_second is not None else None,
        image_flat=override.rates.get("images"),
    )
