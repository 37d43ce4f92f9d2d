"""Thresholds that a policy or rule change finds spend already past.

A threshold alert is raised by the usage that takes a window's spend from below the
threshold to it (``projections/crossings.py``). A change that moves a threshold below what
a window has already spent (a limit lowered, a policy or rule added mid-period) leaves no
usage to cross it: it is checked when the change is applied, against the spend counted up
to it in the log, so a replay finds the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from budget.alerting import reached
from budget.policies import PolicyWindow, own_keys, policy_window
from events import BudgetPolicy, BudgetScope
from events.policy import GLOBAL_SCOPE_KEY
from projections.crossings import Threshold, reaches
from projections.engine.projection import Connection

__all__ = ["Standing", "standing_past"]


@dataclass(frozen=True, slots=True)
class Standing:
    """``line``: the index of the threshold in ``thresholds`` that ``window`` (its
    policy's window holding the change, for one key) has spent ``total`` past."""

    line: int
    window: PolicyWindow
    total: Decimal


async def standing_past(
    conn: Connection,
    buckets: str,
    policies: Sequence[BudgetPolicy],
    thresholds: Sequence[tuple[int, Threshold]],
    at: datetime,
    *,
    key: str | None = None,
) -> list[Standing]:
    """Of ``thresholds`` (each with its line), those the spend in ``buckets`` has reached
    in the window of their policy (of ``policies``, all of them: a key's own policy in
    force replaces its scope's per-key ones) that holds ``at``: per key, for a policy
    that limits each key separately (``key``: that one alone)."""
    found: list[Standing] = []
    for index in sorted({t.policy for _, t in thresholds}):
        policy = policies[index]
        bounds = policy_window(policy, at)
        if bounds is None:
            continue
        lines = [(line, t) for line, t in thresholds if t.policy == index]
        own_key = GLOBAL_SCOPE_KEY if policy.scope is BudgetScope.GLOBAL else policy.scope_key
        only = own_key or key
        cursor = await conn.execute(
            f"""SELECT scope_key, sum(cost) FROM {buckets}
            WHERE scope = %s AND (%s::text IS NULL OR scope_key = %s)
              AND bucket_start >= %s AND bucket_start < %s
            GROUP BY scope_key HAVING {reaches("sum(cost)", "%s")}
            ORDER BY scope_key""".encode(),
            (policy.scope.value, only, only, *bounds, min(t.amount for _, t in lines)),
        )
        own = own_keys(policies, at) if own_key is None else set()
        for scope_key, total in await cursor.fetchall():
            if (policy.scope, scope_key) in own:
                continue
            window = PolicyWindow(policy, scope_key, *bounds)
            found.extend(
                Standing(line, window, total) for line, t in lines if reached(total, t.amount)
            )
    return found
