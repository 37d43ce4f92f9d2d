"""The seed's ``models`` module: policies, alert rules, their enums, and the check result."""

from events import (
    Alert,
    AlertRule,
    AlertSeverity,
    AlertType,
    BudgetPeriod,
    BudgetPolicy,
    BudgetScope,
    LimitAction,
)
from events.rpc import CheckResult, PolicyStatus

__all__ = [
    "Alert",
    "AlertRule",
    "AlertSeverity",
    "AlertType",
    "BudgetPeriod",
    "BudgetPolicy",
    "BudgetScope",
    "CheckResult",
    "LimitAction",
    "PolicyStatus",
]
