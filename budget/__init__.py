"""Budget Manager's domain core and public Python API.

Host apps reach the running system only through NATS: ``get_usage_tracker()`` publishes
usage events; the pricing registry runs in-process.
"""

from budget.config import ConfigError, Settings, load_settings
from budget.pricing import (
    Priced,
    PriceOverride,
    PricingRegistry,
    Unpriced,
    UnpricedModelError,
    get_pricing_registry,
)
from budget.tracker import UsageTracker, get_usage_tracker
from budget.usage import normalize_usage, usage_from_response

__all__ = [
    "ConfigError",
    "PriceOverride",
    "Priced",
    "PricingRegistry",
    "Settings",
    "Unpriced",
    "UnpricedModelError",
    "UsageTracker",
    "get_pricing_registry",
    "get_usage_tracker",
    "load_settings",
    "normalize_usage",
    "usage_from_response",
]
