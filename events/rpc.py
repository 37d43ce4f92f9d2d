"""Request/reply messages between trackers and the enforcer (``<prefix>.rpc.<name>``).

Not events: nothing here is stored on the log. Any NATS client may send these as JSON;
an answer that is not the expected model is ``RpcError``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from events.envelope import UtcDatetime
from events.limits import NAME_MAX
from events.policy import BudgetPolicy, LimitAction
from events.usage import Usd

__all__ = [
    "RPC_CHECK",
    "RPC_RELEASE",
    "RPC_SNAPSHOT",
    "TIME_LEFT",
    "CallAttributes",
    "CheckRequest",
    "CheckResult",
    "PolicySpend",
    "PolicyStatus",
    "ReleaseRequest",
    "ReleaseResult",
    "RpcError",
    "Snapshot",
]

RPC_CHECK = "enforcer.check"
RPC_RELEASE = "enforcer.release"
RPC_SNAPSHOT = "enforcer.snapshot"
MAX_REFUSAL_HOLD = 1.0
"""Seconds a service holds at most the refusal of a caller that asked again before its
``retry_after`` (``services.limits``); an asker takes no answer that soon after a refusal
for a held refusal (``budget.rpc``)."""
TIME_LEFT = "Budget-Time-Left"
"""A request's header: the seconds its asker waits for the answer, so a service holding
a refusal for the caller's limits sends it before then (``services.limits``)."""

Money = Annotated[Decimal, Field(ge=0)]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CallAttributes(_Message):
    """What policies match a call on."""

    model: str = Field(min_length=1, max_length=NAME_MAX)
    provider: str | None = Field(default=None, max_length=100)
    user_id: str | None = Field(default=None, max_length=NAME_MAX)
    project_id: str | None = Field(default=None, max_length=NAME_MAX)


class CheckRequest(CallAttributes):
    estimated_cost: Usd
    reserve: bool = Field(default=True, description="hold the estimate until usage settles it")
    ttl_seconds: float | None = Field(
        default=None,
        gt=0,
        le=86400,
        description="seconds the hold lives, up to the enforcer's reservation_ttl_max;"
        " its reservation_ttl if absent",
    )


class ReleaseRequest(_Message):
    reservation_id: str = Field(min_length=1, max_length=100)


class ReleaseResult(_Message):
    released: int = Field(description="holds dropped: 0 when already settled or expired")


class PolicySpend(_Message):
    """One policy's current window for a call and what counts against it so far."""

    policy: BudgetPolicy
    key: str
    window_start: UtcDatetime
    window_end: UtcDatetime
    spent: Money = Field(description="committed usage plus unexpired reservations, USD")


class Snapshot(_Message):
    """The policies that apply to a call and their spend, for answering checks locally."""

    windows: list[PolicySpend]
    as_of: UtcDatetime
    policies_position: int = Field(
        default=0, ge=0, description="the policy log's stream sequence the policies are as of"
    )
    enforced_anywhere: bool = Field(
        default=True, description="some live policy, for any call, is BLOCK or THROTTLE"
    )
    changes_at: UtcDatetime | None = Field(
        default=None,
        description="when a live policy's custom range begins: the answer is stale from then",
    )


class PolicyStatus(_Message):
    """How one policy judged one request."""

    policy_id: str
    name: str
    action: LimitAction
    window_start: datetime
    window_end: datetime
    spend: Money = Field(description="before this request")
    limit_amount: Money
    remaining: Decimal = Field(description="limit minus spend; negative once overspent")
    state: Literal["ok", "soft_limit", "exceeded"] = Field(description="with this request")
    allowed: bool
    retry_after_seconds: float | None = None


class CheckResult(_Message):
    """The answer to ``check_budget``. ``policies`` lists every applicable policy;
    ``decided_by`` the ones that refused (or, when allowed, that warned)."""

    allowed: bool
    action: LimitAction | None = Field(description="what the deciding policies do; None: all ok")
    reason: str
    estimated_cost: Money
    current_spend: Money | None = None
    limit: Money | None = None
    remaining: Decimal | None = None
    retry_after: float | None = Field(default=None, description="seconds (THROTTLE, BLOCK)")
    reservation_id: str | None = None
    policies: list[PolicyStatus] = Field(default_factory=list)
    decided_by: list[str] = Field(default_factory=list)
    enforced: bool = Field(default=False, description="answered by the enforcer, not a cache")


class RpcError(_Message):
    error: str
    retry_after: float | None = Field(
        default=None,
        ge=0,
        description="set when the request was refused for the caller's rate or in-flight"
        " limit, not for what it asked: seconds to wait before asking again",
    )
    unavailable: bool = Field(
        default=False,
        description="the service can answer no request now (its database unreachable, a"
        " loop not healthy), whatever was asked: an outage, as if nobody had answered;"
        " false: this request was refused (wrong, or failed the service)",
    )
