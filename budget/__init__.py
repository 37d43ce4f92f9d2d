"""Budget Manager's domain core and public Python API.

Host apps reach the running system only through NATS: ``get_usage_tracker()`` publishes
usage events; the pricing registry runs in-process.
"""

from budget.checks import BudgetExceeded
from budget.config import ConfigError, Settings, load_settings
from budget.manager import BudgetManager, get_budget_manager
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
    "BudgetExceeded",
    "BudgetManager",
    "ConfigError",
    "PriceOverride",
    "Priced",
    "PricingRegistry",
    "Settings",
    "Unpriced",
    "UnpricedModelError",
    "UsageTracker",
    "get_budget_manager",
    "get_pricing_registry",
    "get_usage_tracker",
    "load_settings",
    "normalize_usage",
    "usage_from_response",
]
