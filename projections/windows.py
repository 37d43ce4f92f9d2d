"""Spend inside policy windows, summed from a projection's quarter-hour buckets.

One statement for any number of windows: the windows travel as one ``jsonb`` parameter.
The enforcer adds the unexpired reservation holds; the alert evaluator sums its own
buckets alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, NamedTuple

from psycopg import AsyncCursor

from budget.policies import PolicyWindow
from projections.engine.projection import Connection

__all__ = [
    "SETTLED",
    "Cursor",
    "WindowTotals",
    "fetch_window_sums",
    "priced_cost",
    "query_window_sums",
    "window_sum_sql",
    "window_sums",
    "window_totals",
    "windows_param",
]

Cursor = AsyncCursor[Any]

SETTLED = """EXISTS (SELECT FROM spend_ledger l
                        WHERE l.reservation_id = h.reservation_id
                          AND coalesce((SELECT c.cost IS NOT NULL FROM spend_corrections c
                                        WHERE c.corrects = l.event_id
                                        ORDER BY c.stream_seq DESC LIMIT 1),
                                       l.cost IS NOT NULL))"""
"""Whether the hold ``h`` is settled: the live spend projection has counted its call at a
price (its latest correction's, else its own). An unpriced call counts nothing: its hold
stays until the call is priced (``budget reprice``) or its window ends, so a BLOCK limit
holds."""

# A hold made in an earlier window counts too while its call is not recorded before this
# one began: a call checked before midnight and finished after it costs today (its event
# is timed when recorded), so today's window must not admit its cap without it.
_HOLDS = f"""
             + coalesce((SELECT sum(h.amount) FROM reservation_holds h
                         WHERE h.policy_id = w.policy_id AND h.window_key = w.key
                           AND h.window_start <= w.start AND h.expires_at > now()
                           AND NOT {SETTLED}
                           AND (h.window_start = w.start
                                OR NOT EXISTS (SELECT FROM spend_ledger l
                                               WHERE l.reservation_id = h.reservation_id
                                                 AND l.occurred_at < w.start))), 0)"""


# The windows of ``windows_param``, numbered ``w.i`` in their order, and a bucket ``b`` in one.
_WINDOWS = """
        FROM ROWS FROM (jsonb_to_recordset(%s::jsonb) AS (policy_id text, scope text,
                        key text, start timestamptz, stop timestamptz)) WITH ORDINALITY
             AS w(policy_id, scope, key, start, stop, i)"""
_IN_WINDOW = """b.scope = w.scope AND b.scope_key = w.key
                           AND b.bucket_start >= w.start AND b.bucket_start < w.stop"""


def window_sum_sql(buckets: str, *, holds: bool = False) -> str:
    """A query of one row (amount, ordinal) per window of ``windows_param``, in its order:
    the cost in ``buckets`` (a relation shaped like ``spend_buckets``) inside the window,
    plus, with ``holds``, what unsettled reservations hold on it."""
    return f"""
        SELECT coalesce((SELECT sum(b.cost) FROM {buckets} b
                         WHERE {_IN_WINDOW}), 0)
               {_HOLDS if holds else ""} AS amount, w.i AS ordinal{_WINDOWS}
        ORDER BY i
        """


def priced_cost(cost: Decimal, requests: int, unpriced_requests: int) -> Decimal | None:
    """``cost``, or None when no call had a price (buckets and rollups sum those as 0)."""
    return None if requests and unpriced_requests == requests else cost


class WindowTotals(NamedTuple):
    cost: Decimal
    """Of the priced calls only."""
    requests: int
    unpriced_requests: int

    @property
    def priced_cost(self) -> Decimal | None:
        return priced_cost(self.cost, self.requests, self.unpriced_requests)


async def window_totals(
    conn: Connection, buckets: str, windows: Sequence[PolicyWindow]
) -> list[WindowTotals]:
    """The cost, calls and unpriced calls in ``buckets`` inside each of ``windows``, in
    their order: what a page shows against a limit, where calls without a price must
    show as such rather than as $0."""
    if not windows:
        return []
    cursor = await conn.execute(
        f"""SELECT coalesce(sum(b.cost), 0), coalesce(sum(b.requests), 0)::bigint,
                   coalesce(sum(b.unpriced_requests), 0)::bigint{_WINDOWS}
            LEFT JOIN {buckets} b ON {_IN_WINDOW}
            GROUP BY w.i ORDER BY w.i""".encode(),
        (windows_param(windows),),
    )
    return [WindowTotals(*row) for row in await cursor.fetchall()]


def windows_param(windows: Sequence[PolicyWindow]) -> str:
    """One text parameter: far cheaper for psycopg to send than five arrays."""
    return json.dumps(
        [
            {
                "policy_id": w.policy.policy_id,
                "scope": w.policy.scope.value,
                "key": w.key,
                "start": w.start.isoformat(),
                "stop": w.end.isoformat(),
            }
            for w in windows
        ]
    )


async def window_sums(
    conn: Connection, buckets: str, windows: Sequence[PolicyWindow], *, holds: bool = False
) -> list[Decimal]:
    """What ``window_sum_sql`` gives for ``windows``, in their order."""
    return await fetch_window_sums(await query_window_sums(conn, buckets, windows, holds=holds))


async def query_window_sums(
    conn: Connection, buckets: str, windows: Sequence[PolicyWindow], *, holds: bool = False
) -> Cursor | None:
    """Send the query only: in pipeline mode it travels with the statements around it, and
    ``fetch_window_sums`` waits for the answer."""
    if not windows:
        return None
    return await conn.execute(
        window_sum_sql(buckets, holds=holds).encode(), (windows_param(windows),)
    )


async def fetch_window_sums(cursor: Cursor | None) -> list[Decimal]:
    return [row[0] for row in await cursor.fetchall()] if cursor is not None else []
