"""Prices: providers, their priced models, and the price that applies to a model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from budget.pricing import ModelPricing, PricingRegistry
from events.envelope import UtcDatetime
from services.api.context import ApiServices, current_services
from services.api.exact_json import ExactJsonRoute
from services.api.limits import limited_read
from services.api.problems import LIMITED_RESPONSES, Problem

__all__ = ["priced_models", "router"]

router = APIRouter(
    route_class=ExactJsonRoute,
    tags=["prices"],
    dependencies=[Depends(limited_read)],
    responses=LIMITED_RESPONSES,
)
Api = Annotated[ApiServices, Depends(current_services)]


class Provider(BaseModel):
    provider: str
    models: int


@router.get("/providers", summary="Providers with priced models")
async def providers(api: Api) -> list[Provider]:
    registry = api.registry
    counts = {p: len(registry.get_provider_models(p)) for p in registry.get_all_providers()}
    # The price data names providers none of whose models it can price (billed per
    # character, say): listed, each would lead to a 404 from its models.
    return [Provider(provider=p, models=n) for p, n in counts.items() if n]


@router.get("/providers/{provider}/models", summary="A provider's priced models")
async def provider_models(api: Api, provider: str) -> list[str]:
    try:
        return priced_models(api.registry, provider)
    except ValueError as exc:
        raise Problem(404, f"{exc} (see GET /providers)") from None


def priced_models(registry: PricingRegistry, provider: str) -> list[str]:
    """``provider``'s priced models; a ValueError saying why there are none (a misspelt
    provider: which one was meant)."""
    models = registry.get_provider_models(provider)
    if not models:
        raise ValueError(f"no priced models for provider {provider!r}")
    return models


@router.get("/prices/{model:path}", summary="The price that applies to a model at a time")
async def price(
    api: Api,
    model: str,
    provider: Annotated[str | None, Query(max_length=100)] = None,
    at: UtcDatetime | None = None,
) -> ModelPricing:
    found = api.registry.get_model_pricing(model, provider, at)
    if found is None:
        why = api.registry.why_unpriced(model, provider, at)
        raise Problem(
            404,
            f"{model!r} has no price: {why}; its usage is recorded unpriced (add a price"
            " override, or fix the name)",
        )
    return found
