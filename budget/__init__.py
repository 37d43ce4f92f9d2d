"""Budget Manager's domain core and public Python API.

Host apps reach the running system only through NATS: ``get_usage_tracker()`` publishes
usage events and asks the enforcer before calls; the manager, the alert engine and the
report generator ask the query service. Nothing here opens the database. The pricing
registry runs in-process.

The names below, and the submodules (``budget.redaction``...), are loaded on first use
(PEP 562): a process that needs some submodules (a worker reads ``budget.config``) does not
import the rest, such as the SDK wrappers of ``budget.instrumentation``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOMES = {
    "budget.alerts": ("AlertEngine", "get_alert_engine"),
    "budget.checks": ("BudgetCheckFailed", "BudgetExceeded"),
    "budget.config": ("ConfigError", "Settings", "load_settings"),
    "budget.instrumentation": ("attribute_to", "instrument"),
    "budget.manager": ("BudgetManager", "get_budget_manager"),
    "budget.pricing": (
        "Priced",
        "PriceOverride",
        "PricingRegistry",
        "Unpriced",
        "UnpricedModelError",
        "get_pricing_registry",
    ),
    "budget.queries": ("NotApplied",),
    "budget.reports": ("ReportGenerator", "get_report_generator"),
    "budget.rpc": ("Refused", "RpcFailure", "Throttled", "Unanswered"),
    "budget.tracker": ("UsageTracker", "get_usage_tracker"),
    "budget.usage": ("normalize_usage", "usage_from_response"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

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


if not TYPE_CHECKING:  # for type checkers, the names are the imports above

    def __getattr__(name: str) -> Any:
        home = _HOME_OF.get(name)
        if home is None:  # a submodule, as ``import budget; budget.redaction`` expects
            try:
                return importlib.import_module(f"budget.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"budget.{name}":
                    raise
                raise AttributeError(f"module 'budget' has no attribute {name!r}") from None
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
