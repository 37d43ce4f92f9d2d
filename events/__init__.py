"""The contract between producers and consumers: events, subjects, streams, codec.

Imports nothing but pydantic and the standard library, so host apps in any language can
follow it from the JSON Schemas exported to ``docs/schemas``. (The consumers' msgspec
mirror of the hot usage events lives with them: ``projections/engine/fast_codec.py``.)
"""

from events.access import ApiKeyCreated, ApiKeyRevoked, ApiRole
from events.alerts import (
    Alert,
    AlertAcknowledged,
    AlertResolved,
    AlertRule,
    AlertRuleRemoved,
    AlertRuleSet,
    AlertSeverity,
    AlertType,
)
from events.bounds import OutOfBounds, TimeBounds
from events.codec import EVENT_TYPES, DecodeError, canonical, decode, encode, headers_for
from events.envelope import Event, Producer, utc_now
from events.policy import (
    BudgetPeriod,
    BudgetPolicy,
    BudgetScope,
    LimitAction,
    PolicyDeleted,
    PolicySet,
    RequestBlocked,
)
from events.subjects import DEFAULT_TOPOLOGY, StreamSpec, Topology
from events.usage import (
    CallKind,
    ImageUsage,
    PriceSource,
    Usage,
    UsageRecorded,
    UsageRepriced,
)

__all__ = [
    "DEFAULT_TOPOLOGY",
    "EVENT_TYPES",
    "Alert",
    "AlertAcknowledged",
    "AlertResolved",
    "AlertRule",
    "AlertRuleRemoved",
    "AlertRuleSet",
    "AlertSeverity",
    "AlertType",
    "ApiKeyCreated",
    "ApiKeyRevoked",
    "ApiRole",
    "BudgetPeriod",
    "BudgetPolicy",
    "BudgetScope",
    "CallKind",
    "DecodeError",
    "Event",
    "ImageUsage",
    "LimitAction",
    "OutOfBounds",
    "PolicyDeleted",
    "PolicySet",
    "PriceSource",
    "Producer",
    "RequestBlocked",
    "StreamSpec",
    "TimeBounds",
    "Topology",
    "Usage",
    "UsageRecorded",
    "UsageRepriced",
    "canonical",
    "decode",
    "encode",
    "headers_for",
    "utc_now",
]
