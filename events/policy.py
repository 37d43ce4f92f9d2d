"""Budget policies and enforcement decisions, as events: policies are rebuilt by replay too.

A policy whose scope is not GLOBAL and has no ``scope_key`` applies to each user (project,
provider, model) separately: ``default_limit`` is such a USER policy.
"""

from __future__ import annotations

import functools
import re
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from events.envelope import Event, UtcDatetime
from events.limits import NAME_MAX
from events.usage import MAX_DECIMAL_PLACES, WrittenPlaces, exact_decimal, exact_money

__all__ = [
    "BUCKET",
    "GLOBAL_SCOPE_KEY",
    "MAX_LIMIT",
    "POLICY_CHANGES",
    "BudgetPeriod",
    "BudgetPolicy",
    "BudgetScope",
    "LimitAction",
    "PolicyDeleted",
    "PolicySet",
    "RequestBlocked",
]

BUCKET = timedelta(minutes=15)
"""Spend is kept in quarter hours: every time zone's midnight (+05:45 included) and every
custom range falls on one, so any policy window is an exact sum of buckets."""

GLOBAL_SCOPE_KEY = "*"
"""The scope key of global totals (other scopes are keyed by their user, project, ...)."""

Money = Annotated[Decimal, Field(ge=0)]
MAX_LIMIT = 10**15
"""The largest policy limit, USD (a thousand times the dearest call the contract admits):
every threshold of it still fits the projections' and the evaluator's arithmetic."""
Limit = Annotated[
    Decimal,
    Field(ge=0, le=MAX_LIMIT, decimal_places=MAX_DECIMAL_PLACES),
    WrittenPlaces,
    exact_decimal(MAX_LIMIT),
]

Percent = Annotated[Decimal, Field(gt=0, le=100, decimal_places=MAX_DECIMAL_PLACES), WrittenPlaces]
"""A policy's soft limit in percent of its limit, with the limit's bounds on places: the
thresholds made of it (limit x percent / 100) are counted in PostgreSQL's numeric, which
holds 16,383 places (a percent of 1E-17000 had the alert evaluator dead-letter its policy,
which the enforcer enforced with no alert ever raised for it)."""

PolicyId = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]


class BudgetScope(StrEnum):
    GLOBAL = "global"
    USER = "user"
    PROVIDER = "provider"
    MODEL = "model"
    PROJECT = "project"


class BudgetPeriod(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    CUSTOM = "custom"


class LimitAction(StrEnum):
    WARN = "warn"
    BLOCK = "block"
    THROTTLE = "throttle"
    NOTIFY = "notify"

    @property
    def enforced(self) -> bool:
        """Needs the enforcer's strongly consistent answer (a reservation)."""
        return self in (LimitAction.BLOCK, LimitAction.THROTTLE)


_CUSTOM_BOUNDS = ("custom_start", "custom_end")


class BudgetPolicy(BaseModel):
    """A spending limit for one scope and period. ``soft_limit_percent`` of the limit is
    where warnings start and where THROTTLE starts pacing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy_id: PolicyId = Field(default_factory=lambda: uuid.uuid4().hex)
    name: str = Field(min_length=1, max_length=NAME_MAX)
    scope: BudgetScope = BudgetScope.GLOBAL
    scope_key: str | None = Field(
        default=None,
        max_length=NAME_MAX,
        description="the user/project/provider/model it limits; absent: each one separately",
    )
    period: BudgetPeriod = BudgetPeriod.MONTHLY
    # validate_default: an absent bound of a custom period is an error on that field
    custom_start: UtcDatetime | None = Field(default=None, validate_default=True)
    custom_end: UtcDatetime | None = Field(default=None, validate_default=True)
    limit_amount: Limit
    soft_limit_percent: Percent = Decimal(80)
    action: LimitAction = LimitAction.WARN
    timezone: str | None = Field(default=None, description="IANA name; periods are UTC if absent")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        return value if value is None else known_zone(value)

    @model_validator(mode="before")
    @classmethod
    def _dates_are_midnights(cls, data: Any) -> Any:
        """A custom bound given as a date (the seed's "explicit dates"; YAML reads
        ``2026-12-01`` as one) is that day's midnight in the policy's zone, where its
        periods' days start too (UTC without one)."""
        if not isinstance(data, dict):
            return data
        dates = {k: v for k in _CUSTOM_BOUNDS if type(v := data.get(k)) is date}
        if not dates:
            return data
        try:
            zone = ZoneInfo(data.get("timezone") or "UTC")
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            zone = ZoneInfo("UTC")  # the zone's own validator says what is wrong with it
        midnights = {k: datetime.combine(d, time(), zone).astimezone(UTC) for k, d in dates.items()}
        return data | midnights

    # Field validators, each checking its field against those before it (``info.data``
    # holds the ones that were valid): an error is located on the field at fault.
    @field_validator("scope_key")
    @classmethod
    def _keyed_scope(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("scope") is BudgetScope.GLOBAL:
            raise ValueError("a global policy has no scope_key")
        return value

    @field_validator("custom_start", "custom_end")
    @classmethod
    def _custom_bound(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if "period" not in info.data:
            return value  # the period is wrong, and said so
        custom = info.data["period"] is BudgetPeriod.CUSTOM
        if custom and value is None:
            raise ValueError("a custom period needs custom_start and custom_end")
        if not custom and value is not None:
            raise ValueError("custom_start/custom_end are only for period 'custom'")
        if value is None:
            return value
        start = info.data.get("custom_start")
        if info.field_name == "custom_end" and start is not None and start >= value:
            raise ValueError("custom_start must be before custom_end")
        if not _on_bucket(value):
            raise ValueError(f"custom bounds must fall on a quarter hour (got {value.isoformat()})")
        return value

    @property
    def soft_limit(self) -> Decimal:
        with exact_money():
            return self.limit_amount * self.soft_limit_percent / 100


def known_zone(name: str) -> str:
    """``name`` if this host can load it as a time zone, else ``ValueError``: the event
    contract's check, which policies already in the log keep passing (``iana_zone`` is
    what a new policy or a report's zone must pass)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(_unknown(name)) from None
    return name


def iana_zone(name: str) -> str:
    """``name`` if it is a zone of the IANA time zone database, else ``ValueError``.

    Stricter than what ``ZoneInfo`` loads: its folder also holds this host's own zone
    (``localtime``: another zone on each host, so the enforcer and a report on two hosts
    would count different days), ``Factory`` (no zone: "-00"), and the ``posix/`` and
    ``right/`` copies (``right/`` ones count leap seconds, as no other clock here does).
    """
    if name == "localtime":
        raise ValueError(
            "time zone 'localtime' is this host's own, another on each host; name the"
            " zone (an IANA name, e.g. Europe/Berlin)"
        )
    if name not in iana_zones():
        raise ValueError(_unknown(name))
    return name


@functools.cache
def iana_zones() -> frozenset[str]:
    """The names ``iana_zone`` accepts: the database's zones and links on this host."""
    return frozenset(available_timezones()) - {"localtime", "Factory"}


_FIXED_OFFSET = re.compile(r"(?:UTC|GMT)([+-])(\d{1,2})", re.IGNORECASE)


def _unknown(name: str) -> str:
    """The error for a zone ``name`` that is none, with the IANA name of a fixed offset
    written as one ("UTC+2" is Etc/GMT-2: POSIX reverses the sign)."""
    message = f"unknown time zone {name!r}; use an IANA name"
    fixed = _FIXED_OFFSET.fullmatch(name)
    if fixed:
        zone = f"Etc/GMT{'-' if fixed[1] == '+' else '+'}{int(fixed[2])}"
        if zone in iana_zones():
            message += f" (a fixed offset of {name} is {zone})"
    return message


def _on_bucket(instant: datetime) -> bool:
    return instant.second == 0 and instant.microsecond == 0 and instant.minute % 15 == 0


class PolicySet(Event):
    """A policy was created or replaced (same ``policy_id``)."""

    SUBJECT: ClassVar[str] = "policy.set"

    type: Literal["PolicySet"] = "PolicySet"
    schema_version: Literal[1] = 1
    policy: BudgetPolicy
    set_by: str | None = Field(default=None, max_length=NAME_MAX)


class PolicyDeleted(Event):
    SUBJECT: ClassVar[str] = "policy.deleted"

    type: Literal["PolicyDeleted"] = "PolicyDeleted"
    schema_version: Literal[1] = 1
    policy_id: PolicyId
    deleted_by: str | None = Field(default=None, max_length=NAME_MAX)


POLICY_CHANGES: tuple[type[PolicySet], type[PolicyDeleted]] = (PolicySet, PolicyDeleted)
"""The policy log: the events the policies projection applies, and only those."""


class RequestBlocked(Event):
    """The enforcer refused a request (BLOCK, or THROTTLE pacing): for alerts and audit."""

    SUBJECT: ClassVar[str] = "enforcement.blocked"

    type: Literal["RequestBlocked"] = "RequestBlocked"
    schema_version: Literal[1] = 1
    action: LimitAction
    policy_ids: list[PolicyId] = Field(min_length=1)
    reason: str = Field(max_length=500)
    provider: str | None = Field(default=None, max_length=100)
    model: str = Field(min_length=1, max_length=NAME_MAX)
    user_id: str | None = Field(default=None, max_length=NAME_MAX)
    project_id: str | None = Field(default=None, max_length=NAME_MAX)
    estimated_cost: Money
    spend: Money
    limit_amount: Money
    retry_after_seconds: float | None = None
