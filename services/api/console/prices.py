"""Prices: the providers with priced models, a provider's models, the price that applies to
a model (each usage class's rate, its tiers, images, requests, and which price layer it
came from) and what a chat call of it costs. The seed's ``PricingRegistry`` in a page, over
the same functions as ``/api/v1/providers`` and ``/api/v1/prices/{model}``."""

from __future__ import annotations

from decimal import Decimal

from fastapi import APIRouter, Request, Response

from budget.pricing import ModelPricing, UnpricedModelError
from services.api.console.forms import FORM_ERROR, FormState
from services.api.console.guard import ConsoleRoute, Viewer
from services.api.console.render import render
from services.api.context import services
from services.api.problems import Problem
from services.api.routes import catalog as api

__all__ = ["router"]

router = APIRouter(route_class=ConsoleRoute)

NAMES = ("model", "provider")
TOKENS = ("input_tokens", "cached_tokens", "output_tokens")
USAGE_CLASSES = {
    "input_uncached": "Input",
    "input_cache_read": "Cached input (read)",
    "input_cache_write": "Cache write",
    "output_text": "Output",
    "output_reasoning": "Reasoning output",
    "embedding_tokens": "Embedding",
}
"""The rates' usage classes (``budget.pricing.rates.TOKEN_CLASSES``) as a reader names them."""
MAX_TOKENS = 10**12
"""Far beyond any call, and small enough that a typo of many digits is an error, not a
cost of trillions."""


@router.get("/prices")
async def prices(request: Request, _: Viewer) -> Response:
    params = request.query_params
    state = FormState(values={k: params.get(k, "").strip() for k in (*NAMES, *TOKENS)})
    found = services(request)
    model, provider = state.value("model"), state.value("provider") or None
    models: list[str] = []
    if provider is not None:
        try:
            models = api.priced_models(found.registry, provider)
        except ValueError as exc:
            state.fail("provider", f"{exc} (the providers are listed below)")
    pricing: ModelPricing | None = None
    if model:
        try:
            pricing = await api.price(found, model, provider, None)
        except Problem as problem:
            state.fail("model", problem.detail)
    tokens = _tokens(state)
    cost: Decimal | None = None
    if pricing is not None and tokens is not None:
        try:
            cost = found.registry.calculate_llm_cost(
                pricing.model,
                input_tokens=tokens["input_tokens"],
                output_tokens=tokens["output_tokens"],
                cached_tokens=tokens["cached_tokens"],
                provider=pricing.provider,
            )
        except UnpricedModelError as exc:  # priced by images or requests, not by tokens
            state.fail(FORM_ERROR, str(exc))
    context = {
        "title": "Prices",
        "form": state,
        "providers": await api.providers(found),
        "models": models,
        "pricing": pricing,
        "tokens": tokens,
        "cost": cost,
        "usage_classes": USAGE_CLASSES,
    }
    return render(request, "prices.html", context, status=422 if state.errors else 200)


def _tokens(state: FormState) -> dict[str, int] | None:
    """The token counts of the call to cost, when any was typed (an empty one is 0)."""
    if not any(state.value(name) for name in TOKENS):
        return None
    counts: dict[str, int] = {}
    for name in TOKENS:
        text = state.value(name) or "0"
        if not (text.isascii() and text.isdigit()) or int(text) > MAX_TOKENS:
            state.fail(name, f"a whole number of tokens from 0 to {MAX_TOKENS:,}")
        else:
            counts[name] = int(text)
    if len(counts) < len(TOKENS):
        return None
    if counts["cached_tokens"] > counts["input_tokens"]:
        state.fail("cached_tokens", "cached tokens are part of the input: at most Input tokens")
        return None
    return counts
