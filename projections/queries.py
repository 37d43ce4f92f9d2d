"""Read-side queries shared by the CLI and the services."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from budget.periods import Period, period_bounds, period_start
from budget.policies import canonical_key
from events import Alert, BudgetScope, ImageUsage, Topology, Usage
from events.queries import AlertDelivery, AlertsQuery, SpendKey, SpendRow, StoredAlert
from projections.engine.checkpoints import list_checkpoints
from projections.engine.log import pending_after
from projections.engine.projection import Connection
from projections.engine.runner import consumer_name
from projections.registry import get_projection
from projections.spend import SCOPES

__all__ = [
    "AlertPosition",
    "ProjectionStatus",
    "RecordedUsage",
    "alert_deliveries",
    "alerts_page",
    "count_alerts",
    "find_alerts",
    "projection_status",
    "spend_for_period",
    "usage_between",
]


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    version: int
    live: bool
    checkpoint: int
    events_applied: int
    lag: int
    newest_event_at: datetime | None


async def projection_status(
    conn: Connection, js: JetStreamContext, topology: Topology
) -> list[ProjectionStatus]:
    """Lag is what the version's consumer has not committed yet; before its worker first
    ran, the events on its subjects after the checkpoint."""
    stream = topology.event_stream.name
    result = []
    for cp in await list_checkpoints(conn):
        projection = get_projection(cp.name)
        try:
            info = await js.consumer_info(stream, consumer_name(projection, cp.version))
            lag = int(info.num_pending) + int(info.num_ack_pending)
        except NotFoundError:
            subjects = projection.filter_subjects(topology)
            lag = await pending_after(js, stream, subjects, cp.stream_seq)
        result.append(
            ProjectionStatus(
                cp.name,
                cp.version,
                cp.version == cp.active_version,
                cp.stream_seq,
                cp.events_applied,
                lag,
                cp.newest_event_at,
            )
        )
    return result


async def spend_for_period(
    conn: Connection,
    period: Period,
    at: datetime,
    scope: str | None = None,
    key: str | None = None,
    after: SpendKey | None = None,
) -> list[SpendRow]:
    """Totals of the calendar period (UTC) containing ``at``, for every scope or one, every
    key or one: the sum of the period's quarter-hour buckets. ``key`` is matched as spend
    is counted under each scope (``canonical_key``: "OpenAI" is the provider "openai",
    "GPT-4o" the model "gpt-4o", a user "OpenAI" stays "OpenAI"). ``after``: only the
    rows after it by scope, then scope key in code point order; ordered as ``spend_order``."""
    start, end = period_bounds(period, at)
    scopes = [scope] if scope is not None else list(SCOPES)
    wanted = None if key is None else {s: canonical_key(BudgetScope(s), key) for s in scopes}
    # Each condition only when there is one: as ``(%s IS NULL OR scope = %s)`` it cannot
    # bound the index scan in the generic plan a prepared statement ends up with. One key
    # is read through the index (scope, scope_key, bucket_start), once per scope without
    # one: a month's buckets of that key, not of every key.
    conditions = ["bucket_start >= %s", "bucket_start < %s"]
    params: list[object] = [start, end]
    if scope is not None:
        conditions.append("scope = %s")
        params.append(scope)
    elif key is not None:
        conditions.append("scope = ANY(%s)")
        params.append(list(SCOPES))
    if wanted is not None:
        conditions.append("scope_key = ANY(%s)")
        params.append(sorted(set(wanted.values())))
    if after is not None:
        conditions.append('(scope, scope_key COLLATE "C") > (%s, %s)')
        params += [after.scope, after.scope_key]
    cursor = await conn.execute(
        "SELECT scope, scope_key, sum(cost), sum(requests)::bigint,"
        " sum(unpriced_requests)::bigint,"
        " sum(input_uncached + input_cache_read + input_cache_write),"
        " sum(output_text + output_reasoning)"
        f" FROM spend_buckets WHERE {' AND '.join(conditions)}"
        ' GROUP BY scope, scope_key ORDER BY scope, sum(cost) DESC, scope_key COLLATE "C"'.encode(),
        params,
    )
    day = period_start(period, at)
    return [
        SpendRow(
            scope=scope_,
            scope_key=key_,
            period=period.value,
            period_start=day,
            cost=cost,
            requests=requests,
            unpriced_requests=unpriced,
            input_tokens=inputs,
            output_tokens=outputs,
        )
        for scope_, key_, cost, requests, unpriced, inputs, outputs in await cursor.fetchall()
        if wanted is None or wanted[scope_] == key_  # not a user "openai" for "OpenAI"
    ]


_ALERT_FILTERS = (
    " FROM alerts WHERE (%(id)s::uuid IS NULL OR alert_id = %(id)s)"
    " AND (%(policy)s::text IS NULL OR policy_id = %(policy)s)"
    " AND (NOT %(unacked)s OR acknowledged_at IS NULL)"
    " AND (NOT %(acked)s OR acknowledged_at IS NOT NULL)"
    " AND (%(resolved)s::boolean IS NULL OR (resolved_at IS NOT NULL) = %(resolved)s)"
    " AND (%(severity)s::text IS NULL OR alert ->> 'severity' = %(severity)s)"
    " AND (%(type)s::text IS NULL OR alert ->> 'alert_type' = %(type)s)"
)
_STORED = "alert, acknowledged_by, acknowledged_at, resolved_by, resolved_at"


def _alert_params(query: AlertsQuery) -> dict[str, Any]:
    return {
        "id": query.alert_id,
        "policy": query.policy_id,
        "unacked": query.unacknowledged_only,
        "acked": query.acknowledged_only,
        "resolved": query.resolved,
        "severity": query.severity,
        "type": query.alert_type,
        "limit": query.limit,
    }


def _stored(row: Sequence[Any]) -> StoredAlert:
    alert, acked_by, acked_at, resolved_by, resolved_at = row[:5]
    return StoredAlert(
        alert=Alert.model_validate(alert),
        acknowledged_by=acked_by,
        acknowledged_at=acked_at,
        resolved_by=resolved_by,
        resolved_at=resolved_at,
    )


_RAISED_ORDER = (
    "raised_at {0}, stream_seq {0}, coalesce((alert ->> 'threshold_percent')::numeric, 0) {0},"
    " alert_id {0}"
)
"""Raised order (in a burst: lower thresholds first), ``ASC`` or ``DESC``."""


async def find_alerts(conn: Connection, query: AlertsQuery) -> list[StoredAlert]:
    """The newest ``query.limit`` of the alerts ``query`` selects, oldest first."""
    cursor = await conn.execute(
        f"SELECT {_STORED} FROM (SELECT *{_ALERT_FILTERS}"
        f" ORDER BY {_RAISED_ORDER.format('DESC')} LIMIT %(limit)s) AS newest"
        f" ORDER BY {_RAISED_ORDER.format('ASC')}",
        _alert_params(query),
    )
    return [_stored(row) for row in await cursor.fetchall()]


async def count_alerts(conn: Connection, query: AlertsQuery) -> int:
    """How many alerts ``query`` selects (its limit aside)."""
    cursor = await conn.execute(f"SELECT count(*){_ALERT_FILTERS}", _alert_params(query))
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


AlertPosition = tuple[datetime, int, UUID]
"""Where a page of alerts ends: (raised_at, stream_seq, alert_id) of its last alert."""


async def alerts_page(
    conn: Connection, query: AlertsQuery, after: AlertPosition | None = None
) -> tuple[list[StoredAlert], AlertPosition | None]:
    """Up to ``query.limit`` alerts newest first, after ``after``; and where the next page
    starts (None on the last). Keyset, so any page costs the same."""
    params = _alert_params(query) | {"limit": query.limit + 1}
    keyset = ""
    if after is not None:
        keyset = " AND (raised_at, stream_seq, alert_id) < (%(t)s, %(s)s, %(a)s)"
        params.update(t=after[0], s=after[1], a=after[2])
    cursor = await conn.execute(
        f"SELECT {_STORED}, raised_at, stream_seq, alert_id{_ALERT_FILTERS}{keyset}"
        " ORDER BY raised_at DESC, stream_seq DESC, alert_id DESC LIMIT %(limit)s",
        params,
    )
    rows = await cursor.fetchall()
    page = [_stored(row) for row in rows[: query.limit]]
    last = rows[query.limit - 1] if len(rows) > query.limit else None
    return page, None if last is None else (last[5], last[6], last[7])


async def alert_deliveries(conn: Connection, alert_id: UUID) -> list[AlertDelivery]:
    """Where the alert was sent, or why not yet: one row per channel."""
    cursor = await conn.execute(
        "SELECT channel, status, attempts, last_error, sent_at FROM alert_outbox"
        " WHERE alert_id = %s ORDER BY channel",
        (alert_id,),
    )
    return [
        AlertDelivery(channel=c, status=s, attempts=a, last_error=e, sent_at=t)
        for c, s, a, e, t in await cursor.fetchall()
    ]


@dataclass(frozen=True)
class RecordedUsage:
    """A usage event as the read models know it now: current cost after corrections."""

    event_id: UUID
    occurred_at: datetime
    provider: str
    model: str
    user_id: str | None
    project_id: str | None
    usage: Usage
    cost: Decimal | None
    revision: int
    """The log position of the last change of ``cost``: the event's own, or that of the
    latest correction applied to it."""
    from_price_data: bool
    """Whether ``cost`` was computed from price data, rather than given by the host (an
    estimated cost) or absent (unpriced)."""
    unpriced_reason: str | None


async def usage_between(conn: Connection, since: datetime, until: datetime) -> list[RecordedUsage]:
    """Usage events with ``since <= occurred_at < until``, oldest first, with the cost the
    spend projection currently counts for each."""
    cursor = await conn.execute(
        "SELECT h.event_id, h.occurred_at, h.provider, h.model, h.user_id, h.project_id,"
        " h.input_uncached, h.input_cache_read, h.input_cache_write, h.output_text,"
        " h.output_reasoning, h.embedding_tokens, h.audio_seconds,"
        " h.image_count, h.image_size, h.image_quality,"
        " CASE WHEN c.stream_seq IS NULL THEN l.cost ELSE c.cost END,"
        " coalesce(c.stream_seq, l.stream_seq), h.price IS NOT NULL, h.unpriced_reason"
        " FROM usage_history h JOIN spend_ledger l USING (event_id)"
        " LEFT JOIN LATERAL (SELECT cost, stream_seq FROM spend_corrections"
        "   WHERE corrects = l.event_id ORDER BY stream_seq DESC LIMIT 1) c ON true"
        " WHERE h.occurred_at >= %s AND h.occurred_at < %s ORDER BY h.occurred_at, h.stream_seq",
        (since, until),
    )
    result = []
    for row in await cursor.fetchall():
        images = ImageUsage(count=row[13], size=row[14], quality=row[15]) if row[13] else None
        usage = Usage(
            input_uncached=row[6],
            input_cache_read=row[7],
            input_cache_write=row[8],
            output_text=row[9],
            output_reasoning=row[10],
            embedding_tokens=row[11],
            audio_seconds=row[12],
            images=images,
        )
        event_id, occurred_at, provider, model, user_id, project_id = row[:6]
        result.append(
            RecordedUsage(
                event_id, occurred_at, provider, model, user_id, project_id, usage, *row[16:]
            )
        )
    return result
