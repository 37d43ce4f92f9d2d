"""Budget Manager's domain core and public Python API.

Host apps reach the running system only through NATS: ``get_usage_tracker()`` publishes
usage events; the pricing registry runs in-process.
"""

from typing import TYPE_CHECKING, Any

from budget.checks import BudgetExceeded
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

if TYPE_CHECKING:
    from budget.alert_engine import AlertEngine, get_alert_engine
    from budget.manager import BudgetManager, get_budget_manager
    from budget.reports import ReportGenerator, get_report_generator

__all__ = [
    "AlertEngine",
    "BudgetExceeded",
    "BudgetManager",
    "ConfigError",
    "PriceOverride",
    "Priced",
    "PricingRegistry",
    "ReportGenerator",
    "Settings",
    "Unpriced",
    "UnpricedModelError",
    "UsageTracker",
    "get_alert_engine",
    "get_budget_manager",
    "get_pricing_registry",
    "get_report_generator",
    "get_usage_tracker",
    "load_settings",
    "normalize_usage",
    "usage_from_response",
]


def __getattr__(name: str) -> Any:
    """The manager, the alert engine and the report generator read projections, which
    use this package's domain modules: they are imported on first use, not with ``budget``."""
    if name in ("BudgetManager", "get_budget_manager"):
        from budget import manager

        return getattr(manager, name)
    if name in ("AlertEngine", "get_alert_engine"):
        from budget import alert_engine

        return getattr(alert_engine, name)
    if name in ("ReportGenerator", "get_report_generator"):
        from budget import reports

        return getattr(reports, name)
    raise AttributeError(f"module 'budget' has no attribute {name!r}")
