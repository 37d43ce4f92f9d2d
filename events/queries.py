"""Questions the public API asks the query service (``<prefix>.rpc.<caller>.query.<name>``).

Host apps hold NATS credentials, never the database's: ``BudgetManager``, ``AlertEngine``
and ``ReportGenerator`` read the projections through these request/reply messages. Each
request has one answer model; any other answer is ``events.rpc.RpcError``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field

from events.alerts import Alert, AlertRule, AlertSeverity, AlertType
from events.envelope import UtcDatetime
from events.policy import BudgetPolicy, BudgetScope, iana_zone
from events.rpc import _Message

__all__ = [
    "ANY_QUERY",
    "MAX_ALERTS",
    "MAX_HISTORY_ROWS",
    "MAX_POSITION_WAIT",
    "QUERY_ALERTS",
    "QUERY_DELIVERIES",
    "QUERY_POLICIES",
    "QUERY_POSITION",
    "QUERY_REPORT",
    "QUERY_RULES",
    "QUERY_SPEND",
    "QUERY_TIMES",
    "TAG_GROUP",
    "AlertDelivery",
    "AlertsAnswer",
    "AlertsQuery",
    "CellKind",
    "DeliveriesAnswer",
    "DeliveriesQuery",
    "HistoryMark",
    "PoliciesAnswer",
    "PoliciesQuery",
    "PositionAnswer",
    "PositionQuery",
    "QueryFieldError",
    "QueryTime",
    "ReportAnswer",
    "ReportQuery",
    "ReportTable",
    "RulesAnswer",
    "RulesQuery",
    "SpendAnswer",
    "SpendKey",
    "SpendQuery",
    "SpendRow",
    "StoredAlert",
    "query_time",
    "spend_order",
]


class QueryFieldError(ValueError):
    """A query's ``field`` is wrong for the report asked for (``str(exc)`` says how)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


QUERY_POLICIES = "query.policies"
QUERY_SPEND = "query.spend"
QUERY_RULES = "query.rules"
QUERY_ALERTS = "query.alerts"
QUERY_DELIVERIES = "query.deliveries"
QUERY_REPORT = "query.report"
QUERY_POSITION = "query.position"
ANY_QUERY = "query.*"
"""Every question of the query service (``Topology.rpc_wildcard(ANY_QUERY)``)."""

MAX_POSITION_WAIT = 60.0
"""Seconds the query service waits at most, per question, for a change to apply."""
MAX_HISTORY_ROWS = 100_000
"""The most calls one usage-history report lists."""
MAX_ALERTS = 10_000
"""The most alerts one alerts query lists."""
TAG_GROUP = "tag:"
"""A report's ``group_by`` of ``tag:NAME`` groups the calls by their tag ``NAME``."""


QUERY_TIMES = (datetime(1900, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC))
"""[first, end) of the times a query takes: a period, a report's days or its time zone
reach a little past the time given, and Python's dates end with the year 9999."""


def query_time(value: datetime) -> datetime:
    """``value`` (aware) if a query takes it; else ValueError saying the range."""
    first, end = QUERY_TIMES
    if not first <= value < end:
        raise ValueError(
            f"{value.isoformat()} is out of range: a time from {first:%Y-%m-%d} up to"
            f" {end:%Y-%m-%d} (UTC) is accepted"
        )
    return value


QueryTime = Annotated[UtcDatetime, AfterValidator(query_time)]
"""A time a query takes (``QUERY_TIMES``), in UTC."""


class PoliciesQuery(_Message):
    scope: BudgetScope | None = None


class PoliciesAnswer(_Message):
    policies: list[BudgetPolicy]


class SpendKey(_Message):
    """A row of a spend answer, where a part of it ends."""

    scope: str
    scope_key: str


class SpendQuery(_Message):
    period: Literal["daily", "weekly", "monthly"] = "monthly"
    scope: BudgetScope | None = None
    at: QueryTime | None = Field(default=None, description="a time in the period; now if absent")
    after: SpendKey | None = Field(
        default=None,
        description="only the rows after this one, by scope and then scope key (in Unicode"
        " code point order): the last row of an answer that has more",
    )


class SpendRow(_Message):
    scope: str
    scope_key: str
    period: str
    period_start: date
    cost: Decimal
    requests: int
    unpriced_requests: int
    input_tokens: int
    output_tokens: int


def spend_order(row: SpendRow) -> tuple[str, Decimal, str]:
    """The order of a spend answer's rows: by scope, the dearest first, then by key (in
    code point order: PostgreSQL's "C" collation)."""
    return row.scope, -row.cost, row.scope_key


class SpendAnswer(_Message):
    rows: list[SpendRow]
    more: bool = Field(
        default=False,
        description="cut to fit one NATS message: these rows are the first by scope and"
        " scope key; ask again with the last one as after",
    )


class RulesQuery(_Message):
    pass


class RulesAnswer(_Message):
    rules: list[AlertRule]


class AlertsQuery(_Message):
    alert_id: uuid.UUID | None = None
    policy_id: str | None = None
    unacknowledged_only: bool = False
    acknowledged_only: bool = False
    resolved: bool | None = Field(default=None, description="None: resolved or not")
    severity: AlertSeverity | None = None
    alert_type: AlertType | None = None
    limit: int = Field(
        default=1000, ge=1, le=MAX_ALERTS, description="the newest this many, oldest first"
    )


class StoredAlert(_Message):
    # An alert and its state (a comment: a docstring would be the wire schema's text).
    alert: Alert
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    resolved_by: str | None = None
    resolved_at: datetime | None = None

    # The alert's fields read as its own too (``stored.alert_id``, ``stored.severity``), as
    # the seed's ``get_active_alerts()`` then ``acknowledge_alert(alert.alert_id, ...)``
    # reads them; for type checkers they are under ``alert`` only.
    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            alert = self.__dict__.get("alert")
            if alert is not None and name in Alert.model_fields:
                return getattr(alert, name)
            return super().__getattr__(name)


class AlertsAnswer(_Message):
    alerts: list[StoredAlert]


class DeliveriesQuery(_Message):
    alert_id: uuid.UUID


class AlertDelivery(_Message):
    channel: str
    status: str
    attempts: int
    last_error: str | None = None
    sent_at: datetime | None = None


class DeliveriesAnswer(_Message):
    deliveries: list[AlertDelivery]


class PositionQuery(_Message):
    """Answered once ``projection``'s live version has applied ``at_least`` (a stream
    sequence), or after ``wait_seconds`` with where it is."""

    projection: str = Field(min_length=1, max_length=100)
    at_least: int = Field(default=0, ge=0)
    wait_seconds: float = Field(default=0, ge=0, le=MAX_POSITION_WAIT)


class PositionAnswer(_Message):
    position: int


class HistoryMark(_Message):
    """A call of the usage history, where a part of it ends: its time and event id."""

    occurred_at: UtcDatetime
    event_id: uuid.UUID


class ReportQuery(_Message):
    """One of the reports; the fields its kind does not use are ignored. ``history`` lists
    usage events in [start, end) matching the filters, oldest first (the same time: by
    event id), at most ``limit``, after ``after`` if given."""

    kind: Literal["custom", "summary", "trend", "comparison", "projection", "history"]
    start: QueryTime | None = None
    end: QueryTime | None = None
    previous_start: QueryTime | None = None
    previous_end: QueryTime | None = None
    group_by: list[str] = Field(default_factory=list)
    period: Literal["daily", "weekly", "monthly"] = "monthly"
    days: int = Field(default=30, ge=1, le=3660)
    interval: str = "daily"
    provider: str | None = None
    model: str | None = None
    user_id: str | None = None
    project_id: str | None = None
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="history: only the calls carrying each of these tags with that value",
    )
    limit: int = Field(default=1000, ge=1, le=MAX_HISTORY_ROWS)
    after: HistoryMark | None = Field(
        default=None,
        description="history: only the calls after this one (the last row of an answer"
        " that has more)",
    )
    tz: Annotated[str, AfterValidator(iana_zone)] = Field(
        default="UTC",
        description="IANA time zone whose days, weeks and months the summary, trend and"
        " projection count",
    )


CellKind = Literal["text", "integer", "decimal", "date", "datetime"]


class ReportTable(_Message):
    title: str
    columns: list[str]
    kinds: list[CellKind] = Field(description="how to read each column's cells")
    rows: list[list[str | int | None]] = Field(
        description="decimals, dates and times as ISO/decimal text; integers as numbers"
    )


class ReportAnswer(_Message):
    title: str
    start: datetime
    end: datetime
    tables: list[ReportTable]
    notes: list[str] = Field(default_factory=list)
    more: bool = Field(
        default=False,
        description="history: cut short of its limit to fit one NATS message; ask again"
        " with the last row as after",
    )
