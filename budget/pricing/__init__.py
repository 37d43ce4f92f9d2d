"""Pricing registry: overrides, then the project's supplement, then genai-prices, else
an explicit *unpriced* result. See ``docs/pricing.md``."""

from budget.pricing.catalog import ModelPricing, PricingTier
from budget.pricing.overrides import PriceOverride
from budget.pricing.registry import PricingRegistry, get_pricing_registry
from budget.pricing.results import Priced, Unpriced, UnpricedModelError

__all__ = [
    "ModelPricing",
    "PriceOverride",
    "Priced",
    "PricingRegistry",
    "PricingTier",
    "Unpriced",
    "UnpricedModelError",
    "get_pricing_registry",
]
