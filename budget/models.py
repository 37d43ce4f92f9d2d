"""The seed's ``models`` module: policies and their enums, and the check result."""

from events import BudgetPeriod, BudgetPolicy, BudgetScope, LimitAction
from events.rpc import CheckResult, PolicyStatus

__all__ = [
    "BudgetPeriod",
    "BudgetPolicy",
    "BudgetScope",
    "CheckResult",
    "LimitAction",
    "PolicyStatus",
]
