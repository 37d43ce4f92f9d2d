"""Which policies apply to a call, and the period window each one counts it in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo

from budget.periods import UTC, Period, period_bounds
from budget.pricing.genai import canonical_model, canonical_provider
from events import BudgetPeriod, BudgetPolicy, BudgetScope, LimitAction
from events.policy import GLOBAL_SCOPE_KEY, iana_zone

if TYPE_CHECKING:
    from budget.config import Settings

__all__ = [
    "DEFAULT_USER_POLICY_ID",
    "CallScope",
    "PolicyFieldError",
    "PolicyWindow",
    "applicable",
    "canonical_key",
    "canonical_policy",
    "configured_policies",
    "own_keys",
    "policy_window",
    "policy_zone",
    "settable_policy",
    "window_text",
    "with_configured_defaults",
]

DEFAULT_USER_POLICY_ID = "default-user"


class _Attributed(Protocol):
    @property
    def model(self) -> str: ...
    @property
    def provider(self) -> str | None: ...
    @property
    def user_id(self) -> str | None: ...
    @property
    def project_id(self) -> str | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class CallScope:
    """What a call is attributed to: the keys policies are matched on."""

    model: str
    provider: str | None = None
    user_id: str | None = None
    project_id: str | None = None

    @classmethod
    def of(cls, call: _Attributed) -> CallScope:
        """The scope of anything carrying the four attributes (a usage event, a request)."""
        return cls(
            model=call.model,
            provider=call.provider,
            user_id=call.user_id,
            project_id=call.project_id,
        )

    def key(self, scope: BudgetScope) -> str | None:
        """The call's key in ``scope``; None when it has none. An empty user or project id
        is none: spend is never counted under an empty key, so a limit on it would never
        see the spend it admitted. A provider's and a model's are their keys
        (``canonical_key``), under which their spend is counted however the call spelt
        them: a check sent by any client is matched as the tracker's."""
        if scope is BudgetScope.GLOBAL:
            return GLOBAL_SCOPE_KEY
        if scope is BudgetScope.USER:
            return self.user_id or None
        if scope is BudgetScope.PROJECT:
            return self.project_id or None
        name = self.provider if scope is BudgetScope.PROVIDER else self.model
        return canonical_key(scope, name) or None if name else None


@dataclass(frozen=True, slots=True)
class PolicyWindow:
    """One policy's current window for one scope key (``key``: the spend projection's
    ``scope_key``, so ``"*"`` for global, else the user, project, provider or model)."""

    policy: BudgetPolicy
    key: str
    start: datetime
    end: datetime

    @property
    def ident(self) -> tuple[str, str, datetime]:
        return self.policy.policy_id, self.key, self.start


_Window = tuple[datetime, datetime] | None
_windows: dict[tuple[object, ...], _Window] = {}


def policy_window(policy: BudgetPolicy, at: datetime) -> _Window:
    """[start, end) in UTC of the policy period holding ``at``; None outside a custom range.

    Every bound falls on a quarter hour, so all instants of a quarter hour share a window:
    it is computed once per policy and quarter hour (the evaluator asks per event)."""
    quarter = at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0)
    key = (
        policy.policy_id,
        policy.period,
        policy.timezone,
        policy.custom_start,
        policy.custom_end,
        quarter,
    )
    if key not in _windows:
        if len(_windows) >= 100_000:
            _windows.clear()
        _windows[key] = _compute_window(policy, quarter)
    return _windows[key]


def _compute_window(policy: BudgetPolicy, at: datetime) -> _Window:
    if policy.period is BudgetPeriod.CUSTOM:
        assert policy.custom_start is not None and policy.custom_end is not None
        if policy.custom_start <= at < policy.custom_end:
            return policy.custom_start, policy.custom_end
        return None
    return period_bounds(Period(policy.period.value), at, policy_zone(policy))


def policy_zone(policy: BudgetPolicy) -> tzinfo:
    """The zone whose midnights bound ``policy``'s days, weeks and months (UTC if none)."""
    return ZoneInfo(policy.timezone) if policy.timezone else UTC


_PERIOD_WORDS = {
    BudgetPeriod.DAILY: "day",
    BudgetPeriod.WEEKLY: "week",
    BudgetPeriod.MONTHLY: "month",
    BudgetPeriod.CUSTOM: "period",
}


def window_text(policy: BudgetPolicy, start: datetime) -> str:
    """``policy``'s window from ``start`` as its readers keep it: "the day from 2026-12-07
    00:00 America/New_York", on the clock of the policy's own zone (UTC if none), where
    its periods start at midnight; a New York team never set a day from 05:00 UTC."""
    local, zone = start.astimezone(policy_zone(policy)), policy.timezone or "UTC"
    return f"the {_PERIOD_WORDS[policy.period]} from {local:%Y-%m-%d %H:%M} {zone}"


def own_keys(policies: Sequence[BudgetPolicy], at: datetime) -> set[tuple[BudgetScope, str]]:
    """The (scope, key) pairs with a policy of their own in force at ``at``: for them it
    replaces their scope's per-key policies (``applicable``)."""
    return {
        (p.scope, p.scope_key)
        for p in policies
        if p.scope_key is not None and policy_window(p, at) is not None
    }


def applicable(
    policies: Sequence[BudgetPolicy], call: CallScope, at: datetime
) -> list[PolicyWindow]:
    """The policies that count ``call`` at ``at``, each with its window.

    A policy naming a key (user ``alice``) replaces, for that key, the policies of its scope
    that apply to each key separately (the default user limit): alice's own limit is hers,
    while it is in force (a custom range of hers outside it leaves her the default).
    """
    keyed = {scope for scope, key in own_keys(policies, at) if key == call.key(scope)}
    found = []
    for policy in policies:
        key = call.key(policy.scope)
        if key is None or (policy.scope_key is not None and policy.scope_key != key):
            continue
        if policy.scope_key is None and policy.scope in keyed:
            continue
        window = policy_window(policy, at)
        if window is not None:
            found.append(PolicyWindow(policy, key, *window))
    return found


def canonical_key(scope: BudgetScope, key: str) -> str:
    """``key`` of ``scope`` as spend is counted under it: a provider's however it is spelt
    (``canonical_provider``: "OpenAI" is "openai"), a model's however it is cased
    (``canonical_model``: "GPT-4o" is "gpt-4o"); users and projects as given. The one
    rule: policies, checks, the consumers' staged rows (``projections.usage_rows``) and
    filters all key by it."""
    if scope is BudgetScope.PROVIDER:
        return canonical_provider(key)
    if scope is BudgetScope.MODEL:
        return canonical_model(key)
    return key


def canonical_policy(policy: BudgetPolicy) -> BudgetPolicy:
    """``policy`` keyed as usage is counted and calls are checked (``canonical_key``), so
    that a policy on "OpenAI" or "GPT-4o" counts that provider's or model's spend however
    it was spelt. Applied when a policy is set and whenever policies are loaded: one set
    before a rule keeps matching."""
    if policy.scope_key is not None:
        key = canonical_key(policy.scope, policy.scope_key)
        if key != policy.scope_key:
            return policy.model_copy(update={"scope_key": key})
    return policy


class PolicyFieldError(ValueError):
    """A policy the event contract admits but that may not be set: ``field`` is wrong,
    ``message`` says how (``str(exc)`` names the field too)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def settable_policy(policy: BudgetPolicy) -> BudgetPolicy:
    """``policy`` as it is set (``canonical_policy``), else ``PolicyFieldError``.

    Checks a new policy must pass beyond the event contract's, which the policies already in
    the log must keep passing: a policy naming a key names a user (project, provider, model)
    that calls can have, never an empty one (no call has one; ``CallScope.key``), and its
    time zone is one of the IANA database's, the same on every host (``iana_zone``).
    """
    policy = canonical_policy(policy)
    if policy.timezone is not None:
        try:
            iana_zone(policy.timezone)
        except ValueError as exc:
            raise PolicyFieldError("timezone", str(exc)) from None
    if policy.scope_key == "":
        scope = policy.scope.value
        raise PolicyFieldError(
            "scope_key",
            f"must not be empty (no call has an empty {scope}, so the policy would limit"
            f" nothing); omit scope_key to limit each {scope} separately",
        )
    return policy


def with_configured_defaults(policy: BudgetPolicy, settings: Settings) -> BudgetPolicy:
    """``policy`` with the action and soft limit its document left out taken from
    ``budget.default_action`` and ``budget.soft_limit_percent``, as a ``budget_policies``
    entry and ``budget policy set`` take them: a policy sent over HTTP without them is
    not the model's warn at 80 % where the configuration says otherwise."""
    configured = {
        "action": LimitAction(settings.default_action),
        "soft_limit_percent": settings.soft_limit_percent,
    }
    left_out = {f: v for f, v in configured.items() if f not in policy.model_fields_set}
    return policy.model_copy(update=left_out)


def configured_policies(settings: Settings) -> list[BudgetPolicy]:
    """``budget_policies`` from config.yaml, and the per-user policy ``default_limit`` and
    ``default_action`` give every user without a policy of their own."""
    policies = [canonical_policy(p) for p in settings.policies]
    if settings.default_limit is not None:
        policies.append(
            BudgetPolicy(
                policy_id=DEFAULT_USER_POLICY_ID,
                name="Default user limit",
                scope=BudgetScope.USER,
                period=BudgetPeriod.MONTHLY,
                limit_amount=settings.default_limit,
                soft_limit_percent=settings.soft_limit_percent,
                action=LimitAction(settings.default_action),
            )
        )
    return policies
