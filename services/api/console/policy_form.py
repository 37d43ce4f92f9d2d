"""The policy editor's form: a ``BudgetPolicy`` from what was typed, or the errors by
field; and the form's values for a policy being edited.

Custom period bounds are typed as local date and time in the policy's own time zone
(UTC when it has none), which is how its daily/weekly/monthly periods are reckoned too.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from budget.policies import PolicyFieldError, settable_policy, with_configured_defaults
from events import BudgetPeriod, BudgetPolicy, BudgetScope, LimitAction
from events.policy import iana_zones
from services.api.console.forms import FormState, local_datetime, validate, zone

if TYPE_CHECKING:
    from budget.config import Settings

__all__ = ["ACTIONS", "FIELDS", "PERIODS", "SCOPES", "parse_policy", "policy_values", "zones"]

FIELDS = (
    "policy_id",
    "name",
    "scope",
    "scope_key",
    "period",
    "custom_start",
    "custom_end",
    "timezone",
    "limit_amount",
    "soft_limit_percent",
    "action",
)
SCOPES = [(s.value, s.value.capitalize()) for s in BudgetScope]
PERIODS = [(p.value, p.value.capitalize()) for p in BudgetPeriod]
ACTIONS = [
    (LimitAction.WARN.value, "Warn: log and allow"),
    (LimitAction.BLOCK.value, "Block: refuse over the limit"),
    (LimitAction.THROTTLE.value, "Throttle: pace near the limit"),
    (LimitAction.NOTIFY.value, "Notify administrators"),
]
_LOCAL = "%Y-%m-%dT%H:%M"  # what <input type="datetime-local"> shows


@cache
def zones() -> list[str]:
    """IANA zone names for the form's suggestions: those a policy may be set in."""
    return sorted(iana_zones())


def policy_values(policy: BudgetPolicy) -> dict[str, Any]:
    tz = zone(policy.timezone)

    def local(at: datetime | None) -> str:
        return at.astimezone(tz).strftime(_LOCAL) if at else ""

    return {
        "policy_id": policy.policy_id,
        "name": policy.name,
        "scope": policy.scope.value,
        "scope_key": policy.scope_key or "",
        "period": policy.period.value,
        "custom_start": local(policy.custom_start),
        "custom_end": local(policy.custom_end),
        "timezone": policy.timezone or "",
        "limit_amount": str(policy.limit_amount),
        "soft_limit_percent": str(policy.soft_limit_percent),
        "action": policy.action.value,
    }


def parse_policy(
    values: dict[str, Any], policy_id: str | None, settings: Settings
) -> tuple[BudgetPolicy | None, FormState]:
    """``policy_id``: the policy being edited (its id is not a field then); None for a new
    one, whose id is typed or made up. A soft limit left blank is the configured one
    (``with_configured_defaults``), as the form starts from."""
    state = FormState(values=values)
    data: dict[str, Any] = {name: values.get(name) or None for name in FIELDS}
    data["policy_id"] = policy_id or data["policy_id"]
    tz = zone(data["timezone"])
    for name in ("custom_start", "custom_end"):
        try:
            data[name] = local_datetime(values.get(name, ""), tz)
        except ValueError as exc:
            state.fail(name, str(exc))
            data[name] = None
    # A blank field takes the default: a new id, the configured soft limit, ...
    policy = validate(BudgetPolicy, {k: v for k, v in data.items() if v is not None}, state, FIELDS)
    if policy is not None:
        try:
            policy = settable_policy(with_configured_defaults(policy, settings))
        except PolicyFieldError as exc:
            state.fail(exc.field, exc.message)
    return (None if state.errors else policy), state
