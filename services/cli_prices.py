"""``budget prices``: list providers and models, show the price that applies to a model."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated

import typer

from budget.pricing import ModelPricing, PricingRegistry
from services.cli_context import settings

__all__ = ["app"]

app = typer.Typer(
    help="Model prices: overrides, then the project's supplement, then genai-prices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ProviderOption = Annotated[
    str | None,
    typer.Option("--provider", "-p", help='Provider id or name, any case: "openai", "xAI".'),
]
_CLASSES = (
    ("input_uncached", "input"),
    ("input_cache_read", "cache read"),
    ("input_cache_write", "cache write"),
    ("output_text", "output"),
    ("output_reasoning", "reasoning"),
)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"budget: {message}", err=True)
    return typer.Exit(code=2)


def _money(value: Decimal | None) -> str:
    return "-" if value is None else f"{value.normalize():f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines
    )


def _registry() -> PricingRegistry:
    """The prices the tracker charges: the configured overrides over the price data."""
    return PricingRegistry(settings().price_overrides)


@app.command("list")
def list_prices(provider: ProviderOption = None) -> None:
    """List providers, or with --provider its models and rates (USD per 1M tokens)."""
    registry = _registry()
    if provider is None:
        rows = [
            [p, str(len(registry.get_provider_models(p)))] for p in registry.get_all_providers()
        ]
        typer.echo(_table(["provider", "models"], rows))
        return
    try:
        models = registry.get_provider_models(provider)
    except ValueError as exc:  # a misspelt provider: which one was meant
        raise _fail(f"{exc} see `budget prices list` for the providers") from None
    if not models:
        raise _fail(f"unknown provider {provider!r}; see `budget prices list` for the providers")
    rows = []
    for model in models:
        pricing = registry.get_model_pricing(model, provider=provider)
        if pricing is None:
            continue
        rates = [_money(pricing.per_million.get(cls)) for cls, _ in _CLASSES[:4]]
        rows.append([model, *rates, pricing.layer])
    header = ["model", *(label for _, label in _CLASSES[:4]), "layer"]
    typer.echo(_table(header, rows))


def _show_rows(pricing: ModelPricing) -> list[list[str]]:
    rows = [
        ["provider", pricing.provider],
        ["model", pricing.model],
        ["layer", pricing.layer],
        ["data version", pricing.data_version],
        ["effective from", str(pricing.effective_from or "-")],
    ]
    for cls, label in _CLASSES:
        if cls in pricing.per_million:
            rows.append([f"{label} / 1M tokens", _money(pricing.per_million[cls])])
    for tier in pricing.tiers:
        for cls, label in _CLASSES:
            if cls in tier.per_million:
                above = f"> {tier.above_input_tokens:,} input tokens"
                rows.append([f"{label} / 1M tokens ({above})", _money(tier.per_million[cls])])
    if pricing.audio_per_second is not None:
        rows.append(["audio / second", _money(pricing.audio_per_second)])
    for key, price in pricing.image_prices.items():
        rows.append([f"image {key}", _money(price)])
    if pricing.image_flat is not None:
        rows.append(["image (any size)", _money(pricing.image_flat)])
    if pricing.per_request is not None:
        rows.append(["per request", _money(pricing.per_request)])
    return rows


@app.command("show")
def show(
    model: Annotated[str, typer.Argument(help='Model id as sent to the provider, e.g. "gpt-4o".')],
    provider: ProviderOption = None,
    on: Annotated[
        str | None, typer.Option("--on", help="UTC date YYYY-MM-DD (default: today).")
    ] = None,
) -> None:
    """Show the price that applies to MODEL: layer, data version, effective date, rates."""
    try:
        day = date.fromisoformat(on) if on else datetime.now(UTC).date()
    except ValueError:
        raise _fail(f"--on must be a date like 2026-01-31, got {on!r}") from None
    at = datetime(day.year, day.month, day.day, tzinfo=UTC)
    pricing = _registry().get_model_pricing(model, provider=provider, at=at)
    if pricing is None:
        raise _fail(str(_registry().why_unpriced(model, provider=provider, at=at)))
    typer.echo(_table(["field", "value"], _show_rows(pricing)))
