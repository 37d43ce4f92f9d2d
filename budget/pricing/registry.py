"""``PricingRegistry``: price a call from the first layer that knows the model.

Layers: (a) custom overrides, (b) the project's supplement, (c) genai-prices at the time
of the call, (d) an explicit ``Unpriced``. A price is resolved once per (provider, model,
UTC day) and cached; a cached call is Decimal arithmetic only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from budget.pricing import genai
from budget.pricing.overrides import PriceOverride, override_card
from budget.pricing.rates import RateCard
from budget.pricing.results import Priced, Unpriced
from budget.pricing.seed_api import SeedApi
from budget.pricing.supplement import MODEL_ALIASES, SUPPLEMENT, SUPPLEMENT_VERSION, supplement_card
from budget.usage import modality_tokens, service_tiers
from events.usage import Usage

__all__ = ["PricingRegistry", "get_pricing_registry"]

_Key = tuple[str | None, str, int]


class PricingRegistry(SeedApi):
    def __init__(self, overrides: Sequence[PriceOverride] = (), *, cache_size: int = 65_536):
        self.overrides = tuple(overrides)
        self._cache: dict[_Key, RateCard | Unpriced] = {}
        self._cache_size = cache_size
        self._override_cards: dict[int, RateCard] = {}
        self._providers: dict[str, str | None] = {}
        self._listed = {}

    def price(
        self,
        *,
        provider: str | None,
        model: str,
        usage: Usage,
        at: datetime,
        raw_usage: object | None = None,
    ) -> Priced | Unpriced:
        """Cost of ``usage`` of ``model`` at ``at`` (naive = UTC), or why it has none.
        ``raw_usage``: the provider's usage object ``usage`` was read from, where a model
        that prices audio or image tokens apart looks for them (``modality_tokens``)."""
        tz = at.tzinfo
        day = at.toordinal() if tz is None or tz is UTC else at.astimezone(UTC).toordinal()
        hit = self._cache.get((provider, model, day))
        if hit is None:
            hit, cacheable = self.resolve(provider, model, at)
            if cacheable:
                if len(self._cache) >= self._cache_size:
                    self._cache.clear()
                self._cache[(provider, model, day)] = hit
        if isinstance(hit, Unpriced):
            return hit
        if raw_usage is not None and (hit.modal or hit.service_tiers):
            media = modality_tokens(raw_usage, hit.modal) if hit.modal else {}
            apart = hit.apart(media, service_tiers(raw_usage))
            if apart is not None:
                return apart
        return hit.cost(usage)

    def warm(self) -> None:
        """Load genai-prices' data now rather than on the first call."""
        genai.snapshot()

    def resolve(
        self, provider: str | None, model: str, at: datetime
    ) -> tuple[RateCard | Unpriced, bool]:
        """The rate card for ``model`` at ``at`` and whether it holds for the whole UTC day."""
        day = (at if at.tzinfo is None else at.astimezone(UTC)).date()
        pid = genai.canonical_provider(provider) if provider else None
        name = genai.canonical_model(model)
        alias = MODEL_ALIASES.get(name)
        target = alias if alias and pid in (None, alias[0]) else (pid, name)
        found = genai.find_model(*target)
        names = {name, target[1]} | ({found[1].id} if found else set())
        in_force = [
            (i, override)
            for i, override in enumerate(self.overrides)
            if genai.canonical_model(override.model) in names
            and pid in (None, genai.canonical_provider(override.provider))
            and override.active_on(day)
        ]
        if in_force:
            # The newest price in force wins, as in the other layers: an open-ended
            # override listed before a later one had shadowed it for good.
            i, override = max(in_force, key=lambda pair: pair[1].effective_from)
            card = self._override_cards.get(i)
            if card is None:
                o_pid = genai.canonical_provider(override.provider)
                card = self._override_cards[i] = override_card(override, o_pid)
            return card, True
        for entry in SUPPLEMENT:
            if (
                entry.model == name
                and pid in (None, entry.provider)
                and entry.effective_from <= day
            ):
                return supplement_card(entry), True
        if found is not None:
            card, cacheable = genai.card_for(*found, at)
            if not card.prices_anything:  # a call of it costs what no usage class counts
                return Unpriced(
                    f"model {card.model!r} (provider {card.provider!r}) has no rate usage"
                    " events are priced by (tokens, audio seconds, images, requests: it is"
                    f" billed by another unit, e.g. per character or page) in {card.data_version}"
                ), cacheable
            return card, cacheable
        given = repr(provider) if provider else "not given"
        return Unpriced(
            self.unknown_provider_note(provider)
            + f"no price in any layer for model {model!r} (provider {given}) on {day}: "
            f"not in {len(self.overrides)} override(s), {SUPPLEMENT_VERSION} or "
            f"{genai.data_version()}"
        ), True

    def provider_of(self, model: str) -> str | None:
        """The provider that prices ``model`` when the caller did not say (pre-call checks)."""
        if model not in self._providers:
            if len(self._providers) >= self._cache_size:
                self._providers.clear()
            self._providers[model] = self._find_provider(model)
        return self._providers[model]

    def _find_provider(self, model: str) -> str | None:
        name = genai.canonical_model(model)
        for override in self.overrides:
            if genai.canonical_model(override.model) == name:
                return genai.canonical_provider(override.provider)
        alias = MODEL_ALIASES.get(name)
        if alias is not None:
            return alias[0]
        for entry in SUPPLEMENT:
            if entry.model == name:
                return entry.provider
        found = genai.find_model(None, name)
        return found[0].id if found else None

    def _known_models(self, provider_id: str) -> set[str]:
        models = set(genai.provider_models(provider_id))
        models |= {e.model for e in SUPPLEMENT if e.provider == provider_id}
        models |= {a for a, (p, _) in MODEL_ALIASES.items() if p == provider_id}
        models |= {
            o.model for o in self.overrides if genai.canonical_provider(o.provider) == provider_id
        }
        return models

    def unknown_provider_note(self, provider: str | None) -> str:
        """``"provider 'opnai' is unknown: did you mean 'openai'? "`` when ``provider`` is
        none this registry knows (an override's own counts) and looks like a typo of one
        (the model is then not the one to blame), else ``""``."""
        if not provider or genai.canonical_provider(provider) in self._known_providers():
            return ""
        meant = genai.misspelled_provider(provider)
        if meant is None:
            return ""
        return f"provider {provider!r} is unknown: did you mean {meant!r}? "

    def _known_providers(self) -> set[str]:
        providers = set(genai.provider_ids()) | {e.provider for e in SUPPLEMENT}
        return providers | {genai.canonical_provider(o.provider) for o in self.overrides}


_shared: tuple[tuple[PriceOverride, ...], PricingRegistry] | None = None
"""The registry last handed out, with its overrides: asked again for the same ones (the
usual case: config.yaml's, every time), the same registry and its cache are given."""


async def get_pricing_registry(
    overrides: Sequence[PriceOverride] | None = None,
) -> PricingRegistry:
    """The shared registry, with its data loaded. ``overrides`` default to config.yaml's
    ``budget.price_overrides``, the ones ``get_usage_tracker()`` prices calls with, so a
    cost asked of it is the cost the tracker records (``ConfigError`` if the config is
    wrong); ``[]`` for none."""
    global _shared
    if overrides is None:
        from budget.config import load_settings  # budget.config imports budget.pricing

        overrides = load_settings().price_overrides
    wanted = tuple(overrides)
    if _shared is None or _shared[0] != wanted:
        _shared = (wanted, PricingRegistry(wanted))
    registry = _shared[1]
    if not genai.loaded():
        import asyncio

        await asyncio.to_thread(registry.warm)
    return registry
