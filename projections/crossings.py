"""The alert evaluator's usage path in PostgreSQL: which counted spend took a policy window
or a scope's hour from below a threshold to it, a few statements per batch, whatever its size.

What counts (the ledger rule, ``projections/ledger.py``): the batch's usage events at their
first appearance, read from the shared usage ledger by stream sequence, and its
corrections' differences, at the corrected event's time and scopes. Running sums in log
order over each window's (or hour's) counted spend, starting from its total before the
batch, find the first event at which the total reaches a threshold: the same event, total
and time however the log was batched. Python builds an alert only for what crossed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from budget.alerting import ANOMALY_FLOOR, ANOMALY_MIN_DAYS
from budget.policies import PolicyWindow, policy_window
from events import BudgetPolicy, BudgetScope
from events.policy import GLOBAL_SCOPE_KEY
from events.usage import exact_money
from projections.engine.projection import Connection
from projections.ledger import Booked, Recorded, recorded_usage

__all__ = [
    "HISTORY_DAYS",
    "Counted",
    "Crossing",
    "HourHistory",
    "Spend",
    "Threshold",
    "Unpriced",
    "first_unpriced",
    "hour_crossings",
    "hour_history",
    "reaches",
    "window_crossings",
    "window_totals_ddl",
]

HISTORY_DAYS = 28
"""How many earlier days the anomaly test looks back at."""

_ORIGIN = "timestamptz '2000-01-01 00:00+00'"
_QUARTER = f"date_bin('15 minutes', {{}}, {_ORIGIN})"
_HOUR = f"date_bin('1 hour', {{}}, {_ORIGIN})"
_DAY = f"date_bin('1 day', {{}}, {_ORIGIN})"


def reaches(total: str, amount: str) -> str:
    """SQL: whether ``total`` has reached a threshold of ``amount``, as
    ``budget.alerting.reached`` says (a $0 threshold: once past $0)."""
    return f"({total} >= {amount} AND {total} > 0)"


def _crossed(total: str, cost: str, amount: str) -> str:
    """SQL: whether the row adding ``cost`` took ``total`` (with it) to ``amount``."""
    return f"NOT {reaches(f'{total} - {cost}', amount)} AND {reaches(total, amount)}"


def _key_of(scope: str) -> str:
    """The SQL key a counted row ``c`` has in ``scope`` (NULL: it has none there)."""
    return (
        f"CASE {scope} WHEN 'global' THEN '{GLOBAL_SCOPE_KEY}' WHEN 'user' THEN c.user_id"
        " WHEN 'project' THEN c.project_id WHEN 'provider' THEN c.provider ELSE c.model END"
    )


@dataclass(frozen=True, slots=True)
class Counted:
    """The spend one segment of the log adds: the usage events the ledger recorded at the
    segment's stream sequences (priced ones; a re-send is recorded nowhere) and the
    segment's corrections that change a cost."""

    usage: str
    """The ledger's usage table."""
    recorded: Recorded
    corrections: str
    """A JSON array of the corrections, shaped like the rows of ``cte``."""

    @classmethod
    def of(cls, usage: str, recorded: Recorded, booked: Sequence[Booked]) -> Counted:
        corrections = [
            {
                "seq": b.applied.stream_seq,
                "event_id": str(b.event_id),
                "occurred_at": b.occurred_at.isoformat(),
                "cost": str(b.cost_delta),
                **{k: b.original[k] for k in ("provider", "model", "user_id", "project_id")},
            }
            for b in booked
            if b.cost_delta
        ]
        return cls(usage, recorded, json.dumps(corrections))

    @property
    def params(self) -> dict[str, Any]:
        return {**self.recorded.params, "corrections": self.corrections}

    @property
    def cte(self) -> str:
        """``counted``: (seq, event_id, occurred_at, cost, provider, model, user_id,
        project_id), one row per change of spend."""
        return f"""counted AS (
            SELECT u.stream_seq AS seq, u.event_id, u.occurred_at, u.cost, u.provider,
                   u.model, u.user_id, u.project_id
            FROM {recorded_usage(self.usage, "u")}
            WHERE u.cost IS NOT NULL
            UNION ALL
            SELECT * FROM jsonb_to_recordset(%(corrections)s::jsonb) AS c(seq bigint,
                event_id uuid, occurred_at timestamptz, cost numeric, provider text,
                model text, user_id text, project_id text)
        )"""


@dataclass(frozen=True, slots=True)
class Spend:
    """Where the evaluator's spend is: its quarter-hour ``buckets`` and ``window_totals``,
    a cache of their sums over the policy windows it has evaluated (``window_totals_ddl``)."""

    buckets: str
    window_totals: str


def window_totals_ddl(table: str) -> list[str]:
    """Each row is the cost in the buckets of (scope, scope_key) inside [start, stop), kept
    so by every batch; without a row, a window is summed from the buckets once. Keyed by
    ``stop`` before ``start``: a batch reads only the windows that end after its spend, not
    those of earlier periods. Rows belong to no policy: policies of one window share it."""
    return [
        f"""CREATE TABLE {table} (
            scope text NOT NULL,
            scope_key text NOT NULL,
            stop timestamptz NOT NULL,
            start timestamptz NOT NULL,
            total numeric NOT NULL,
            PRIMARY KEY (scope, scope_key, stop, start))"""
    ]


@dataclass(frozen=True, slots=True)
class Crossing:
    """The counted row that took a total from below a threshold to it: ``line`` is the
    threshold's index, ``where`` says which window or hour (an index or a key)."""

    line: int
    where: int
    key: str
    stream_seq: int
    event_id: Any
    occurred_at: datetime
    total: Decimal


@dataclass(frozen=True, slots=True)
class Threshold:
    """A rule's amount for one policy: the policy's index, and the amount in USD."""

    policy: int
    amount: Decimal


async def window_crossings(
    conn: Connection,
    spend: Spend,
    counted: Counted,
    policies: Sequence[BudgetPolicy],
    thresholds: Sequence[Threshold],
) -> tuple[list[PolicyWindow], list[Crossing]]:
    """Every threshold of ``thresholds`` that counted spend crossed, per window of its
    policy (``policies``, all of them: a policy naming a key replaces for that key the
    policies of its scope without one, as ``budget.policies.applicable`` says), with the
    windows the crossings' ``where`` index (their key still to be filled in).

    First brings every cached window total of the watched policies' scopes up to date with
    the counted spend (and drops those of other scopes)."""
    watched = sorted({t.policy for t in thresholds})
    totals = spend.window_totals
    cursor = await conn.execute(
        f"""WITH {counted.cte}, spent AS (
            SELECT s.scope, s.key, {_QUARTER.format("c.occurred_at")} AS quarter,
                   sum(c.cost) AS cost
            FROM counted c
            CROSS JOIN LATERAL (SELECT scope, {_key_of("scope")} AS key
                                FROM unnest(%(scopes)s::text[]) AS scope) AS s
            WHERE s.key <> ''  -- as the buckets count them
            GROUP BY 1, 2, 3
        ), dropped AS (
            -- totals of scopes no watched policy has would go stale: kept for none
            DELETE FROM {totals} WHERE scope <> ALL(%(scopes)s::text[])
        ), bumped AS (
            UPDATE {totals} t SET total = t.total + d.cost
            FROM (SELECT x.scope, x.scope_key, x.stop, x.start, sum(s.cost) AS cost
                  FROM spent s
                  JOIN {totals} x ON x.scope = s.scope AND x.scope_key = s.key
                                 AND x.stop > s.quarter AND x.start <= s.quarter
                  GROUP BY 1, 2, 3, 4) d
            WHERE t.scope = d.scope AND t.scope_key = d.scope_key AND t.stop = d.stop
              AND t.start = d.start
        )
        SELECT DISTINCT quarter FROM spent""".encode(),
        {**counted.params, "scopes": sorted({policies[i].scope.value for i in watched})},
    )
    quarters = [row[0].astimezone(UTC) for row in await cursor.fetchall()]
    windows: list[PolicyWindow] = []
    rows = []
    for index in watched:
        policy = policies[index]
        for quarter in quarters:
            bounds = policy_window(policy, quarter)
            if bounds is None:
                continue
            rows.append(
                {
                    "w": len(windows),
                    "p": index,
                    "scope": policy.scope.value,
                    "scope_key": policy.scope_key,
                    "quarter": quarter.isoformat(),
                    "start": bounds[0].isoformat(),
                    "stop": bounds[1].isoformat(),
                }
            )
            windows.append(PolicyWindow(policy, "", *bounds))
    if not rows:
        return windows, []
    # A key's own policy replaces its scope's per-key ones only while it is in force: a
    # custom one in its range (as ``budget.policies.own_keys``), in the quarters it holds.
    keyed = [
        {
            "scope": p.scope.value,
            "key": p.scope_key,
            "since": p.custom_start.isoformat() if p.custom_start else None,
            "until": p.custom_end.isoformat() if p.custom_end else None,
        }
        for p in policies
        if p.scope_key is not None
    ]
    lines = [{"l": i, "p": t.policy, "amount": str(t.amount)} for i, t in enumerate(thresholds)]
    cursor = await conn.execute(
        f"""WITH {counted.cte},
        windows AS (
            SELECT * FROM jsonb_to_recordset(%(windows)s::jsonb) AS w(w int, p int, scope text,
                scope_key text, quarter timestamptz, start timestamptz, stop timestamptz)
        ), keyed AS (
            SELECT * FROM jsonb_to_recordset(%(keyed)s::jsonb) AS k(scope text, key text,
                since timestamptz, until timestamptz)
        ), matched AS (
            SELECT w.w, w.p, w.scope, k.key, w.start, w.stop, c.seq, c.event_id,
                   c.occurred_at, c.cost
            FROM counted c
            JOIN windows w ON w.quarter = {_QUARTER.format("c.occurred_at")}
            CROSS JOIN LATERAL (SELECT {_key_of("w.scope")}) AS k(key)
            WHERE k.key IS NOT NULL
              AND (w.scope_key = k.key
                   OR w.scope_key IS NULL AND NOT EXISTS (
                       SELECT FROM keyed WHERE keyed.scope = w.scope AND keyed.key = k.key
                                          AND (keyed.since IS NULL OR w.quarter >= keyed.since
                                               AND w.quarter < keyed.until)))
        ), touched AS (
            SELECT DISTINCT p, scope, key, start, stop FROM matched
        ), fresh AS (
            -- windows without a cached total: summed from the buckets (the batch in them)
            INSERT INTO {totals} (scope, scope_key, stop, start, total)
            SELECT t.scope, t.key, t.stop, t.start,
                   coalesce((SELECT sum(b.cost) FROM {spend.buckets} b
                             WHERE b.scope = t.scope AND b.scope_key = t.key
                               AND b.bucket_start >= t.start AND b.bucket_start < t.stop), 0)
            FROM (SELECT DISTINCT scope, key, stop, start FROM touched) t
            WHERE NOT EXISTS (SELECT FROM {totals} x
                              WHERE x.scope = t.scope AND x.scope_key = t.key
                                AND x.stop = t.stop AND x.start = t.start)
            RETURNING scope, scope_key, stop, start, total
        ), steps AS (
            -- one row per window with its spend, the batch in it; then its counted rows:
            -- a running sum gives the total at each of them
            SELECT t.p, t.key, t.start, NULL::int AS w, NULL::bigint AS seq,
                   NULL::uuid AS event_id, NULL::timestamptz AS occurred_at,
                   0::numeric AS cost, coalesce(x.total, f.total) AS amount
            FROM touched t
            LEFT JOIN {totals} x ON x.scope = t.scope AND x.scope_key = t.key
                                AND x.stop = t.stop AND x.start = t.start
            LEFT JOIN fresh f ON f.scope = t.scope AND f.scope_key = t.key
                             AND f.stop = t.stop AND f.start = t.start
            UNION ALL
            SELECT p, key, start, w, seq, event_id, occurred_at, cost, cost FROM matched
        ), runs AS (
            SELECT *, sum(amount) OVER upto - sum(cost) OVER whole AS total
            FROM steps
            WINDOW whole AS (PARTITION BY p, key, start),
                   upto AS (whole ORDER BY seq NULLS FIRST)
        )
        SELECT DISTINCT ON (l.l, r.key, r.start) l.l, r.w, r.key, r.seq, r.event_id,
               r.occurred_at, r.total
        FROM runs r
        JOIN jsonb_to_recordset(%(lines)s::jsonb) AS l(l int, p int, amount numeric)
             ON l.p = r.p
        WHERE r.seq IS NOT NULL AND {_crossed("r.total", "r.cost", "l.amount")}
        ORDER BY l.l, r.key, r.start, r.seq""".encode(),
        {
            **counted.params,
            "windows": json.dumps(rows),
            "keyed": json.dumps(keyed),
            "lines": json.dumps(lines),
        },
    )
    return windows, [Crossing(*row) for row in await cursor.fetchall()]


@dataclass(frozen=True, slots=True)
class HourHistory:
    """One scope key's hour that counted spend touched: its spend with the batch
    (``now``), the batch's part of it (``batch``), and the same hour on each of the ``HISTORY_DAYS``
    earlier days (``past[0]``: yesterday), of which the first ``days`` count (days since
    the key's first spend)."""

    scope: BudgetScope
    key: str
    hour: datetime
    now: Decimal
    batch: Decimal
    added: Decimal
    """The batch's increases alone: no running total in it exceeds ``now - batch + added``."""
    past: list[Decimal]
    days: int

    def may_reach(self, threshold: Decimal) -> bool:
        with exact_money():
            return self.now - self.batch + self.added >= threshold


async def hour_history(
    conn: Connection, buckets: str, counted: Counted, scopes: Sequence[BudgetScope]
) -> list[HourHistory]:
    """Every hour of a key of ``scopes`` that counted spend touched, with its history when
    the anomaly test could find it unusual: the key spent for ``ANOMALY_MIN_DAYS`` before
    it, and the hour's total may reach ``ANOMALY_FLOOR`` within the batch."""
    cursor = await conn.execute(
        f"""WITH {counted.cte}, hours AS (
            SELECT s.scope, s.key, {_HOUR.format("c.occurred_at")} AS hour,
                   sum(c.cost) AS batch, sum(greatest(c.cost, 0)) AS added
            FROM counted c
            CROSS JOIN LATERAL (SELECT scope, {_key_of("scope")} AS key
                                FROM unnest(%(scopes)s::text[]) AS scope) AS s
            WHERE s.key IS NOT NULL
            GROUP BY 1, 2, 3
        ), totals AS (
            SELECT h.*,
                   coalesce((SELECT sum(b.cost) FROM {buckets} b
                             WHERE b.scope = h.scope AND b.scope_key = h.key
                               AND b.bucket_start >= h.hour
                               AND b.bucket_start < h.hour + interval '1 hour'), 0) AS now,
                   (SELECT min(b.bucket_start) FROM {buckets} b
                    WHERE b.scope = h.scope AND b.scope_key = h.key) AS first
            FROM hours h
        )
        SELECT scope, key, hour, now, batch, added,
               CASE WHEN {_HOUR.format("first")} <= hour - %(min_days)s * interval '1 day'
                         AND now - batch + added >= %(floor)s
                    THEN ARRAY(SELECT coalesce((SELECT sum(b.cost) FROM {buckets} b
                                   WHERE b.scope = t.scope AND b.scope_key = t.key
                                     AND b.bucket_start >= t.hour - d * interval '1 day'
                                     AND b.bucket_start < t.hour - d * interval '1 day'
                                                          + interval '1 hour'), 0)
                               FROM generate_series(1, {HISTORY_DAYS}) AS d ORDER BY d)
               END,
               first
        FROM totals t""".encode(),
        {
            **counted.params,
            "scopes": [s.value for s in scopes],
            "min_days": ANOMALY_MIN_DAYS,
            "floor": ANOMALY_FLOOR,
        },
    )
    found = []
    for scope, key, hour, now, batch, added, past, first in await cursor.fetchall():
        since = _epoch_hour(first) if first is not None else _epoch_hour(hour)
        days = max(0, min(HISTORY_DAYS, (_epoch_hour(hour) - since) // 24))
        if past is None:  # the anomaly test would find nothing
            past, days = [], 0
        found.append(
            HourHistory(
                BudgetScope(scope), key, hour.astimezone(UTC), now, batch, added, past, days
            )
        )
    return found


async def hour_crossings(
    conn: Connection, counted: Counted, hours: Sequence[tuple[HourHistory, Decimal]]
) -> list[Crossing]:
    """For each (hour, threshold) of ``hours`` whose counted spend crossed it: where
    (``where``: its index in ``hours``)."""
    if not hours:
        return []
    lines = [
        {
            "l": i,
            "scope": h.scope.value,
            "key": h.key,
            "hour": h.hour.isoformat(),
            "now": str(h.now),
            "batch": str(h.batch),
            "threshold": str(threshold),
        }
        for i, (h, threshold) in enumerate(hours)
    ]
    cursor = await conn.execute(
        f"""WITH {counted.cte}, lines AS (
            SELECT * FROM jsonb_to_recordset(%(lines)s::jsonb) AS l(l int, scope text,
                key text, hour timestamptz, now numeric, batch numeric, threshold numeric)
        ), items AS (
            SELECT s.scope, s.key, {_HOUR.format("c.occurred_at")} AS hour, c.seq,
                   c.event_id, c.occurred_at, c.cost
            FROM counted c
            CROSS JOIN LATERAL (SELECT scope, {_key_of("scope")} AS key
                                FROM (SELECT DISTINCT scope FROM lines) AS scopes) AS s
        ), runs AS (
            SELECT l.l, l.key, l.threshold, i.seq, i.event_id, i.occurred_at, i.cost,
                   l.now - l.batch + sum(i.cost) OVER (PARTITION BY l.l ORDER BY i.seq) AS total
            FROM lines l
            JOIN items i ON i.scope = l.scope AND i.key = l.key AND i.hour = l.hour
        )
        SELECT DISTINCT ON (l) l, l, key, seq, event_id, occurred_at, total
        FROM runs
        WHERE {_crossed("total", "cost", "threshold")}
        ORDER BY l, seq""".encode(),
        {**counted.params, "lines": json.dumps(lines)},
    )
    return [Crossing(*row) for row in await cursor.fetchall()]


@dataclass(frozen=True, slots=True)
class Unpriced:
    """The first usage event (in log order) of a segment recorded without a price, for a
    provider, model and UTC ``day``."""

    provider: str
    model: str
    day: datetime
    stream_seq: int
    event_id: Any
    occurred_at: datetime


async def first_unpriced(
    conn: Connection, counted: Counted, booked: Sequence[Booked]
) -> list[Unpriced]:
    """Per provider, model and UTC day, the segment's first usage event without a price
    or correction that leaves its call without one (``counted`` leaves both out: they add
    no spend), in log order."""
    day = _DAY.format("u.occurred_at")
    cursor = await conn.execute(
        f"""SELECT DISTINCT ON (u.provider, u.model, {day}) u.provider, u.model, {day},
               u.stream_seq, u.event_id, u.occurred_at
        FROM {recorded_usage(counted.usage, "u")}
        WHERE u.cost IS NULL
        ORDER BY u.provider, u.model, {day}, u.stream_seq""".encode(),
        counted.recorded.params,
    )
    found = [
        Unpriced(provider, model, day.astimezone(UTC), seq, event_id, at.astimezone(UTC))
        for provider, model, day, seq, event_id, at in await cursor.fetchall()
    ]
    found += [
        Unpriced(
            b.original["provider"],
            b.original["model"],
            b.occurred_at.replace(hour=0, minute=0, second=0, microsecond=0),  # its UTC day
            b.applied.stream_seq,
            b.event_id,
            b.occurred_at,
        )
        for b in booked
        if b.unpriced_delta > 0
    ]
    first: dict[tuple[str, str, datetime], Unpriced] = {}
    for unpriced in sorted(found, key=lambda u: u.stream_seq):
        first.setdefault((unpriced.provider, unpriced.model, unpriced.day), unpriced)
    return list(first.values())


def _epoch_hour(instant: datetime) -> int:
    return int(instant.timestamp()) // 3600
