"""Budget Manager's domain core and public Python API.

Host apps reach the running system only through NATS: ``get_usage_tracker()`` publishes
usage events and asks the enforcer before calls; the manager, the alert engine and the
report generator ask the query service. Nothing here opens the database. The pricing
registry runs in-process.
"""

from budget.alerts import AlertEngine, get_alert_engine
from budget.checks import BudgetCheckFailed, BudgetExceeded
from budget.config import ConfigError, Settings, load_settings
from budget.instrumentation import attribute_to, instrument
from budget.manager import BudgetManager, get_budget_manager
from budget.pricing import (
    Priced,
    PriceOverride,
    PricingRegistry,
    Unpriced,
    UnpricedModelError,
    get_pricing_registry,
)
from budget.queries import NotApplied
from budget.reports import ReportGenerator, get_report_generator
from budget.rpc import Refused, RpcFailure, Throttled, Unanswered
from budget.tracker import UsageTracker, get_usage_tracker
from budget.usage import normalize_usage, usage_from_response

__all__ = [
    "AlertEngine",
    "BudgetCheckFailed",
    "BudgetExceeded",
    "BudgetManager",
    "ConfigError",
    "NotApplied",
    "PriceOverride",
    "Priced",
    "PricingRegistry",
    "Refused",
    "ReportGenerator",
    "RpcFailure",
    "Settings",
    "Throttled",
    "Unanswered",
    "Unpriced",
    "UnpricedModelError",
    "UsageTracker",
    "attribute_to",
    "get_alert_engine",
    "get_budget_manager",
    "get_pricing_registry",
    "get_report_generator",
    "get_usage_tracker",
    "instrument",
    "load_settings",
    "normalize_usage",
    "usage_from_response",
]
