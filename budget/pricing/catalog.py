"""``ModelPricing``: a readable view of one model's resolved price (seed API, CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from budget.pricing.rates import RateCard, divided_cost

__all__ = ["ModelPricing", "PricingTier"]


@dataclass(frozen=True)
class PricingTier:
    above_input_tokens: int
    per_million: dict[str, Decimal]


@dataclass(frozen=True)
class ModelPricing:
    """Token rates in USD per million tokens by usage class; audio per second; images each."""

    provider: str
    model: str
    layer: str
    data_version: str
    effective_from: date | None
    per_million: dict[str, Decimal]
    tiers: list[PricingTier] = field(default_factory=list)
    audio_per_second: Decimal | None = None
    audio_min_seconds: Decimal | None = None
    image_prices: dict[str, Decimal] = field(default_factory=dict)
    image_flat: Decimal | None = None
    per_request: Decimal | None = None

    @classmethod
    def from_card(cls, card: RateCard) -> ModelPricing:
        base, *higher = card.tiers
        return cls(
            provider=card.provider,
            model=card.model,
            layer=card.layer,
            data_version=card.data_version,
            effective_from=card.effective_from,
            per_million=dict(base.rates_mtok),
            tiers=[
                PricingTier(above_input_tokens=t.above, per_million=dict(t.rates_mtok))
                for t in higher
            ],
            audio_per_second=divided_cost(Decimal(1), *card.audio) if card.audio else None,
            audio_min_seconds=card.audio_min,
            image_prices={f"{s} {q}": p for (s, q), p in sorted(card.images.items())},
            image_flat=card.image_flat,
            per_request=card.per_request,
        )
