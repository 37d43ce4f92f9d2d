"""The enforcer's SQL: locks and reservation holds.

A window's spend (``projections.windows`` with ``holds``) is the live spend projection's
buckets inside it plus the unexpired holds on it whose usage has not reached the live
ledger; both are read by one statement, so the hold and the cost that settles it are never
both counted or both missed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from budget.policies import PolicyWindow
from projections.base import Connection

__all__ = [
    "Hold",
    "insert_holds",
    "lock_windows",
    "release",
    "release_finished",
]


@dataclass(frozen=True, slots=True)
class Hold:
    reservation_id: str
    window: PolicyWindow
    amount: Decimal
    expires_at: datetime


def _lock_key(window: PolicyWindow) -> int:
    digest = hashlib.blake2b(f"{window.policy.policy_id}\x00{window.key}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


async def lock_windows(conn: Connection, windows: Sequence[PolicyWindow]) -> None:
    """Serialise deciders on the same windows until commit; always in one global order,
    so two enforcers locking overlapping sets cannot deadlock."""
    keys = sorted({_lock_key(w) for w in windows})
    if keys:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(k, i)"
            " ORDER BY i",
            (keys,),
        )


async def insert_holds(conn: Connection, holds: Sequence[Hold]) -> None:
    if not holds:
        return
    await conn.execute(
        """
        INSERT INTO reservation_holds
            (reservation_id, policy_id, window_key, window_start, amount, expires_at)
        SELECT * FROM jsonb_to_recordset(%s::jsonb) AS (reservation_id text, policy_id text,
            window_key text, window_start timestamptz, amount numeric, expires_at timestamptz)
        """,
        (
            _json(
                {
                    "reservation_id": h.reservation_id,
                    "policy_id": h.window.policy.policy_id,
                    "window_key": h.window.key,
                    "window_start": h.window.start.isoformat(),
                    "amount": str(h.amount),
                    "expires_at": h.expires_at.isoformat(),
                }
                for h in holds
            ),
        ),
    )


def _json(rows: Iterable[dict[str, str]]) -> str:
    return json.dumps(list(rows))


async def release(conn: Connection, reservation_id: str) -> int:
    """Drop a reservation's holds (the call failed or was abandoned); returns how many."""
    cursor = await conn.execute(
        "DELETE FROM reservation_holds WHERE reservation_id = %s", (reservation_id,)
    )
    return cursor.rowcount


async def release_finished(conn: Connection) -> tuple[int, int]:
    """Delete holds that expired or whose usage reached the live ledger (settled by a
    rebuilt version, which leaves deletion to this job). Returns (expired, settled)."""
    cursor = await conn.execute(
        """
        WITH gone AS (
            DELETE FROM reservation_holds h
            WHERE h.expires_at <= now()
               OR EXISTS (SELECT FROM spend_ledger l WHERE l.reservation_id = h.reservation_id)
            RETURNING h.expires_at <= now() AS expired
        )
        SELECT count(*) FILTER (WHERE expired), count(*) FILTER (WHERE NOT expired) FROM gone
        """
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
