"""Alert rules, alerts and what people do with them, as events and as the alert message.

Rules, acknowledgements and resolutions are facts on the log; alerts themselves are
derived by the evaluator (rebuilt by replay) and published as ``Alert`` messages on
``<prefix>.alerts.<severity>.<type>``.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, ClassVar, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from events.envelope import Event, UtcDatetime
from events.limits import NAME_MAX
from events.policy import BudgetScope, LimitAction
from events.usage import MAX_DECIMAL_PLACES, WrittenPlaces

__all__ = [
    "CHANNELS",
    "Alert",
    "AlertAcknowledged",
    "AlertResolved",
    "AlertRule",
    "AlertRuleRemoved",
    "AlertRuleSet",
    "AlertSeverity",
    "AlertType",
]

RuleId = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]
Channel = Literal["nats", "log", "ui", "webhook", "email"]
CHANNELS: tuple[Channel, ...] = get_args(Channel)
"""Every channel an alert can go to."""


class AlertSeverity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertType(StrEnum):
    THRESHOLD_WARNING = "threshold_warning"
    THRESHOLD_CRITICAL = "threshold_critical"
    LIMIT_EXCEEDED = "limit_exceeded"
    ANOMALY = "anomaly"
    POLICY_VIOLATION = "policy_violation"
    ADMIN_NOTIFICATION = "admin_notification"
    """A NOTIFY policy's spend reached its limit: what that action asks for."""
    UNPRICED_USAGE = "unpriced_usage"
    """Usage of a model was recorded without a price: it counts toward no limit, threshold
    or anomaly until repriced."""

    @property
    def is_threshold(self) -> bool:
        return self in (
            AlertType.THRESHOLD_WARNING,
            AlertType.THRESHOLD_CRITICAL,
            AlertType.LIMIT_EXCEEDED,
            AlertType.ADMIN_NOTIFICATION,
        )


_WATCHING_TOTALS = (AlertType.ANOMALY, AlertType.UNPRICED_USAGE)
"""Rule types about spend totals or models, which no policy has."""

ThresholdPercent = Annotated[
    Decimal, Field(gt=0, le=1000, decimal_places=MAX_DECIMAL_PLACES), WrittenPlaces
]
"""Bounded in places as a policy's soft limit is (``events.policy``): a threshold of it
is counted in PostgreSQL's numeric."""


class AlertRule(BaseModel):
    """When to raise an alert and where to send it.

    Threshold rules fire once per policy period when spend reaches ``threshold_percent``
    of the limit (absent: each policy's own soft limit). ANOMALY rules fire when an hour's
    spend of a watched scope is far above its usual level for that hour; POLICY_VIOLATION
    rules when the enforcer refuses a request; ADMIN_NOTIFICATION rules are threshold rules
    that watch only NOTIFY policies; UNPRICED_USAGE rules once a UTC day per model used
    without a price (it counts toward no limit then). ``cooldown_minutes``, in event time, keeps
    one rule from alerting about the same policy (or scope key) again too soon.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule_id: RuleId = Field(default_factory=lambda: uuid.uuid4().hex)
    name: str = Field(min_length=1, max_length=NAME_MAX)
    alert_type: AlertType = AlertType.THRESHOLD_WARNING
    threshold_percent: ThresholdPercent | None = None
    severity: AlertSeverity = AlertSeverity.WARNING
    channels: tuple[Channel, ...] = ("nats", "log", "ui")
    cooldown_minutes: Annotated[int, Field(ge=0, le=525_600)] = 0
    policy_ids: tuple[str, ...] | None = Field(
        default=None, description="policies it watches; absent: all"
    )
    scopes: tuple[BudgetScope, ...] | None = Field(
        default=None, description="scopes it watches (anomalies: which totals); absent: all"
    )

    @model_validator(mode="after")
    def _threshold_fits_type(self) -> Self:
        if not self.alert_type.is_threshold and self.threshold_percent is not None:
            raise ValueError(f"{self.alert_type.value} rules have no threshold_percent")
        return self

    def unused_setting(self) -> str | None:
        """What in this rule would do nothing, as a message naming the field, or None.
        Asked of a rule being set (``AlertEngine``, the API, the console), not of one
        already in the log: that one was accepted, and stays as it was."""
        if self.policy_ids is not None and self.alert_type in _WATCHING_TOTALS:
            return (
                f"policy_ids: {self.alert_type.value} rules watch no policy"
                + (", only totals (scopes)" if self.alert_type is AlertType.ANOMALY else "")
                + "; leave policy_ids out"
            )
        if self.scopes is not None and self.alert_type is AlertType.UNPRICED_USAGE:
            return "scopes: unpriced_usage rules are about models, not scopes; leave scopes out"
        if self.policy_ids == ():
            return "policy_ids: an empty list watches no policy; leave it out to watch all"
        if self.scopes == ():
            return "scopes: an empty list watches nothing; leave it out to watch all"
        return None

    def watches(self, policy_id: str, scope: BudgetScope, *, action: LimitAction | None) -> bool:
        """``action``: the policy's (None: the policy is gone, e.g. a violation of a
        deleted one); an ADMIN_NOTIFICATION rule watches NOTIFY policies only."""
        if self.alert_type is AlertType.ADMIN_NOTIFICATION and action is not LimitAction.NOTIFY:
            return False
        return (self.policy_ids is None or policy_id in self.policy_ids) and (
            self.scopes is None or scope in self.scopes
        )


class Alert(BaseModel):
    """An alert as sent on every channel (``<prefix>.alerts.<severity>.<type>``, webhook
    body, email, UI feed). ``alert_id`` is derived from what raised it, so a replay or a
    redelivery raises the same id, and receivers can drop repeats by it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alert_id: uuid.UUID
    alert_type: AlertType
    severity: AlertSeverity
    rule_id: str
    rule_name: str
    message: str
    raised_at: UtcDatetime = Field(description="event time of what raised it")
    caused_by: uuid.UUID | None = Field(
        default=None, description="the event that raised it (absent: evaluated on request)"
    )
    policy_id: str | None = None
    policy_name: str | None = None
    scope: BudgetScope | None = None
    scope_key: str | None = None
    period_start: UtcDatetime | None = None
    period_end: UtcDatetime | None = None
    threshold_percent: Decimal | None = None
    spend: Decimal | None = None
    limit_amount: Decimal | None = None
    baseline: Decimal | None = Field(default=None, description="ANOMALY: the usual hour")


class AlertRuleSet(Event):
    SUBJECT: ClassVar[str] = "alert.rule.set"

    type: Literal["AlertRuleSet"] = "AlertRuleSet"
    schema_version: Literal[1] = 1
    rule: AlertRule


class AlertRuleRemoved(Event):
    SUBJECT: ClassVar[str] = "alert.rule.removed"

    type: Literal["AlertRuleRemoved"] = "AlertRuleRemoved"
    schema_version: Literal[1] = 1
    rule_id: RuleId


class AlertAcknowledged(Event):
    SUBJECT: ClassVar[str] = "alert.acknowledged"

    type: Literal["AlertAcknowledged"] = "AlertAcknowledged"
    schema_version: Literal[1] = 1
    alert_id: uuid.UUID
    acknowledged_by: str = Field(min_length=1, max_length=NAME_MAX)


class AlertResolved(Event):
    SUBJECT: ClassVar[str] = "alert.resolved"

    type: Literal["AlertResolved"] = "AlertResolved"
    schema_version: Literal[1] = 1
    alert_id: uuid.UUID
    resolved_by: str | None = Field(default=None, max_length=NAME_MAX)
