"""The seed's PricingRegistry methods, on top of ``price`` and ``resolve``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import UTC, datetime
from decimal import Decimal

from budget.pricing import genai
from budget.pricing.catalog import ModelPricing
from budget.pricing.rates import RateCard
from budget.pricing.results import Priced, Unpriced, UnpricedModelError
from budget.usage import normalize_usage
from events.usage import ImageUsage, Usage

__all__ = ["SeedApi"]


class SeedApi(ABC):
    _listed: dict[tuple[str, int], list[str]]
    """get_provider_models' answers by (provider, UTC day): resolving ~2,000 ids is slow."""

    @abstractmethod
    def price(
        self, *, provider: str | None, model: str, usage: Usage, at: datetime
    ) -> Priced | Unpriced: ...

    @abstractmethod
    def resolve(
        self, provider: str | None, model: str, at: datetime
    ) -> tuple[RateCard | Unpriced, bool]: ...

    @abstractmethod
    def _known_models(self, provider_id: str) -> set[str]: ...

    @abstractmethod
    def _known_providers(self) -> set[str]: ...

    def _charge(
        self, model: str, usage: Usage, provider: str | None, at: datetime | None
    ) -> Decimal:
        result = self.price(provider=provider, model=model, usage=usage, at=at or datetime.now(UTC))
        if isinstance(result, Unpriced):
            raise UnpricedModelError(result.reason)
        return result.cost

    def get_model_pricing(
        self, model: str, provider: str | None = None, at: datetime | None = None
    ) -> ModelPricing | None:
        """The price that applies to ``model`` at ``at`` (default now), or None if none."""
        card, _ = self.resolve(provider, model, at or datetime.now(UTC))
        return None if isinstance(card, Unpriced) else ModelPricing.from_card(card)

    def why_unpriced(
        self, model: str, provider: str | None = None, at: datetime | None = None
    ) -> str | None:
        """Why ``model`` has no price at ``at`` (default now): every layer looked in, and a
        misspelt provider named first; None when it has one."""
        card, _ = self.resolve(provider, model, at or datetime.now(UTC))
        return card.reason if isinstance(card, Unpriced) else None

    def calculate_llm_cost(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        provider: str | None = None,
        at: datetime | None = None,
    ) -> Decimal:
        """USD for a chat call; ``input_tokens`` includes cached and cache-write tokens,
        ``output_tokens`` includes reasoning tokens. Unknown model: ``UnpricedModelError``."""
        usage = normalize_usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached_tokens,
            cache_write_tokens=cache_write_tokens,
            reasoning_tokens=reasoning_tokens,
        )
        return self._charge(model, usage, provider, at)

    def calculate_image_cost(
        self,
        model: str,
        size: str = "1024x1024",
        quality: str = "standard",
        count: int = 1,
        provider: str | None = None,
        at: datetime | None = None,
    ) -> Decimal:
        images = ImageUsage(count=count, size=size, quality=quality)
        return self._charge(model, normalize_usage(images=images), provider, at)

    def calculate_embedding_cost(
        self, model: str, tokens: int, provider: str | None = None, at: datetime | None = None
    ) -> Decimal:
        return self._charge(model, normalize_usage(embedding_tokens=tokens), provider, at)

    def calculate_audio_cost(
        self,
        model: str,
        seconds: int | float | Decimal,
        provider: str | None = None,
        at: datetime | None = None,
    ) -> Decimal:
        return self._charge(model, normalize_usage(audio_seconds=seconds), provider, at)

    def get_provider_models(self, provider: str, at: datetime | None = None) -> list[str]:
        """Model ids ``provider`` (any spelling: "OpenAI", "xAI") has a price for at ``at``
        (default now): a listed id prices a call. Ids the price data holds but cannot
        price by that name (an entry that only matches other spellings, a rate we do not
        model such as per page) are left out. A name like a known provider's ("opnai"),
        which no override may use either, is a ``ValueError`` saying which, not []."""
        mistaken = genai.misspelled_provider(provider)
        if mistaken is not None:
            raise ValueError(f"unknown provider {provider!r}: did you mean {mistaken!r}?")
        pid = genai.canonical_provider(provider)
        when = at or datetime.now(UTC)
        key = (pid, (when if when.tzinfo is None else when.astimezone(UTC)).toordinal())
        if key not in self._listed:
            if len(self._listed) >= 4096:
                self._listed.clear()
            self._listed[key] = sorted(
                m for m in self._known_models(pid) if self._prices(pid, m, when)
            )
        return list(self._listed[key])

    def _prices(self, provider: str, model: str, at: datetime) -> bool:
        card, _ = self.resolve(provider, model, at)
        return isinstance(card, RateCard) and card.prices_anything

    def get_all_providers(self) -> list[str]:
        return sorted(self._known_providers())
