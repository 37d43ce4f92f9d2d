"""Judging a request against its policies: one rule, used by the enforcer under its locks
and by trackers on their cached snapshots (WARN/NOTIFY-only answers)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal

from budget.alerting import reached
from budget.policies import PolicyWindow
from events import LimitAction
from events.rpc import CheckResult, PolicyStatus
from events.usage import exact_money

__all__ = ["assess", "decide", "past_limit"]

_MICROSECOND = timedelta(microseconds=1)
# Which refusal to report first when several policies refuse.
_SEVERITY = {LimitAction.BLOCK: 3, LimitAction.THROTTLE: 2, LimitAction.NOTIFY: 1}


def past_limit(spend: Decimal, estimate: Decimal, limit: Decimal) -> bool:
    """Whether a request of ``estimate`` finds the window past its limit: it would pass
    the limit, or the limit is already spent (reached: a limit stops spending there, so
    even a request estimated at $0, which would hold nothing, finds no budget left)."""
    return spend + estimate > limit or spend >= limit


def assess(window: PolicyWindow, spend: Decimal, estimate: Decimal, now: datetime) -> PolicyStatus:
    """``spend``: committed plus reserved in the window before this request.

    BLOCK refuses what would pass the limit, and anything once the limit is reached.
    THROTTLE also refuses, past the soft limit, what would run ahead of the limit's pro-rata
    share of the elapsed period; it says when the share will have grown enough. WARN and
    NOTIFY never refuse.
    """
    with exact_money():
        return _assess(window, spend, estimate, now)


def _assess(window: PolicyWindow, spend: Decimal, estimate: Decimal, now: datetime) -> PolicyStatus:
    policy = window.policy
    limit = policy.limit_amount
    after = spend + estimate
    if past_limit(spend, estimate, limit):
        state = "exceeded"
    else:
        # at the soft limit is past it, as its alert and the console's bar count it
        state = "soft_limit" if reached(after, policy.soft_limit) else "ok"
    allowed, retry_after = True, None
    if policy.action.enforced and state == "exceeded":
        allowed, retry_after = False, (window.end - now).total_seconds()
    elif policy.action is LimitAction.THROTTLE and state == "soft_limit":
        length = (window.end - window.start) // _MICROSECOND
        if after * length > limit * ((now - window.start) // _MICROSECOND):
            # the share reaches ``after`` at start + length * after / limit (rounded up)
            needed = (after * length / limit).to_integral_value(rounding=ROUND_CEILING)
            catch_up = window.start + int(needed) * _MICROSECOND
            allowed, retry_after = False, (catch_up - now).total_seconds()
    return PolicyStatus(
        policy_id=policy.policy_id,
        name=policy.name,
        action=policy.action,
        window_start=window.start,
        window_end=window.end,
        spend=spend,
        limit_amount=limit,
        remaining=limit - spend,
        state=state,
        allowed=allowed,
        retry_after_seconds=retry_after,
    )


def _refusal(status: PolicyStatus, estimate: Decimal) -> str:
    if status.state != "exceeded":
        return f"spend is ahead of the pro-rata share of {status.limit_amount} for this period"
    if status.spend >= status.limit_amount:
        return (
            f"its limit {status.limit_amount} is reached ({status.spend} spent or held), so no"
            " call may go ahead until the period ends, whatever its estimate"
        )
    return f"{status.spend} + {estimate} spent would pass its limit {status.limit_amount}"


def decide(
    statuses: Sequence[PolicyStatus],
    estimate: Decimal,
    *,
    enforced: bool,
    reservation_id: str | None = None,
) -> CheckResult:
    """All policies must allow. The reported spend/limit are the deciding policy's: the
    refusing one, else the one closest to its limit."""
    refused = [s for s in statuses if not s.allowed]
    warned = [s for s in statuses if s.state != "ok"]
    if refused:
        refused.sort(key=lambda s: -_SEVERITY.get(s.action, 0))
        decided, lead = refused, refused[0]
        reason = f"{lead.action.value} by policy {lead.name!r}: " + _refusal(lead, estimate)
    elif warned:
        warned.sort(key=lambda s: (s.state != "exceeded", -_SEVERITY.get(s.action, 0)))
        decided, lead = warned, warned[0]
        reason = f"allowed; policy {lead.name!r} is past its " + (
            "limit" if lead.state == "exceeded" else "soft limit"
        )
    elif statuses:
        decided, lead = [], min(statuses, key=lambda s: s.remaining)
        reason = "allowed; within every policy"
    else:
        return CheckResult(
            allowed=True,
            action=None,
            reason="no policy applies",
            estimated_cost=estimate,
            enforced=enforced,
        )
    retry = max((s.retry_after_seconds or 0.0 for s in refused), default=None)
    return CheckResult(
        allowed=not refused,
        action=decided[0].action if decided else None,
        reason=reason,
        estimated_cost=estimate,
        current_spend=lead.spend,
        limit=lead.limit_amount,
        remaining=lead.remaining,
        retry_after=retry,
        reservation_id=reservation_id if not refused else None,
        policies=list(statuses),
        decided_by=[s.policy_id for s in decided],
        enforced=enforced,
    )
