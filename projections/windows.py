"""Spend inside policy windows, summed from a projection's quarter-hour buckets.

One statement for any number of windows: the windows travel as one ``jsonb`` parameter.
The enforcer adds the unexpired reservation holds; the alert evaluator sums its own
buckets alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from budget.policies import PolicyWindow

__all__ = ["window_sum_sql", "windows_param"]

_HOLDS = """
             + coalesce((SELECT sum(h.amount) FROM reservation_holds h
                         WHERE h.policy_id = w.policy_id AND h.window_key = w.key
                           AND h.window_start = w.start AND h.expires_at > now()
                           AND NOT EXISTS (SELECT FROM spend_ledger l
                                           WHERE l.reservation_id = h.reservation_id)), 0)"""


def window_sum_sql(buckets: str, *, holds: bool = False) -> str:
    """A query of one row per window of ``windows_param``, in its order: the cost in
    ``buckets`` (a relation shaped like ``spend_buckets``) inside the window, plus, with
    ``holds``, what unsettled reservations hold on it."""
    return f"""
        SELECT coalesce((SELECT sum(b.cost) FROM {buckets} b
                         WHERE b.scope = w.scope AND b.scope_key = w.key
                           AND b.bucket_start >= w.start AND b.bucket_start < w.stop), 0)
               {_HOLDS if holds else ""}
        FROM ROWS FROM (jsonb_to_recordset(%s::jsonb) AS (policy_id text, scope text,
                        key text, start timestamptz, stop timestamptz)) WITH ORDINALITY
             AS w(policy_id, scope, key, start, stop, i)
        ORDER BY i
        """


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
