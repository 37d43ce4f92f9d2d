"""The enforcer's SQL: locks and reservation holds.

A window's spend (``projections.windows`` with ``holds``) is the live spend projection's
buckets inside it plus the unexpired holds on it whose usage has not reached the live
ledger; both are read by one statement, so the hold and the cost that settles it are never
both counted or both missed.

``budget_reserve`` (installed by ``budget migrate``) does a decider's database work in one
round trip: lock the windows, read the policies' position and the windows' spend, and
insert the holds only if that spend is no higher than what the enforcer judged the
requests against (exactly equal when it refused any). PL/pgSQL gives each statement a new
snapshot, so the read sees everything committed before the lock was granted. The rule
itself stays in Python (``budget.enforcement``); SQL only compares and inserts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from budget.policies import PolicyWindow
from projections.engine.checkpoints import LIVE_POSITION_SQL
from projections.engine.projection import Connection
from projections.windows import SETTLED, window_sum_sql, windows_param

__all__ = [
    "FOREIGN",
    "SPEND_BUCKETS",
    "Hold",
    "Reserved",
    "foreign_holds",
    "insert_holds",
    "install",
    "open_reservations",
    "release",
    "release_finished",
    "reserve",
]

FOREIGN = "was made by another caller"
"""What a refused release says (the API tells a foreign reservation by it)."""

SPEND_BUCKETS = "spend_buckets"  # the live spend projection's view


@dataclass(frozen=True, slots=True)
class Hold:
    reservation_id: str
    window: PolicyWindow
    amount: Decimal
    expires_at: datetime
    caller: str
    """Who reserved (the request subject's caller): only it, or the services, may release."""


def _lock_key(window: PolicyWindow) -> int:
    digest = hashlib.blake2b(f"{window.policy.policy_id}\x00{window.key}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


_INSERT_HOLDS = """
    INSERT INTO reservation_holds (reservation_id, policy_id, window_key, window_start,
        amount, expires_at, caller, window_end)
    SELECT * FROM jsonb_to_recordset({holds}::jsonb) AS (reservation_id text, policy_id text,
        window_key text, window_start timestamptz, amount numeric, expires_at timestamptz,
        caller text, window_end timestamptz)
"""

_RESERVE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION budget_reserve(
    p_lock_keys bigint[], p_windows jsonb, p_expected numeric[], p_exact boolean,
    p_policies_seen bigint, p_holds jsonb)
RETURNS TABLE (out_position bigint, out_spent numeric[], out_reserved boolean)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_position bigint;
    v_spent numeric[];
BEGIN
    -- one global lock order, so two enforcers locking overlapping sets cannot deadlock
    PERFORM pg_advisory_xact_lock(k) FROM unnest(p_lock_keys) AS t(k) ORDER BY k;
    {LIVE_POSITION_SQL.replace("%s", "'policies'")} INTO v_position;
    SELECT coalesce(array_agg(s.amount ORDER BY s.ordinal), '{{}}') INTO v_spent
    FROM ({window_sum_sql(SPEND_BUCKETS, holds=True).replace("%s::jsonb", "p_windows")}) AS s;
    IF p_expected IS NULL
       OR v_position IS DISTINCT FROM p_policies_seen
       OR cardinality(p_expected) IS DISTINCT FROM cardinality(v_spent)
       OR EXISTS (SELECT FROM unnest(v_spent, p_expected) AS t(actual, judged)
                  WHERE judged IS NULL OR actual > judged OR (p_exact AND actual <> judged))
    THEN
        RETURN QUERY SELECT v_position, v_spent, false;
        RETURN;
    END IF;
    {_INSERT_HOLDS.format(holds="p_holds")};
    RETURN QUERY SELECT v_position, v_spent, true;
END
$fn$
"""


@dataclass(frozen=True, slots=True)
class Reserved:
    policies_position: int
    spent: list[Decimal]
    """Each window's spend before this call's holds, in the order given."""
    reserved: bool
    """Whether the holds were inserted."""


async def install(conn: Connection) -> None:
    """Create or update ``budget_reserve`` (idempotent)."""
    await conn.execute(_RESERVE_FUNCTION.encode())


async def reserve(
    conn: Connection,
    *,
    lock: Sequence[PolicyWindow],
    windows: Sequence[PolicyWindow],
    judged: Sequence[Decimal] | None,
    exact: bool,
    policies_seen: int,
    holds: Sequence[Hold],
) -> Reserved:
    """Lock ``lock`` (until the transaction ends), read the policies' position and the
    spend of ``windows``, and insert ``holds`` if the position is ``policies_seen`` and no
    window's spend is above ``judged`` (or differs from it, with ``exact``). With
    ``judged`` None nothing is inserted: a read under the locks."""
    cursor = await conn.execute(
        "SELECT * FROM budget_reserve(%s, %s::jsonb, %s, %s, %s, %s::jsonb)",
        (
            sorted({_lock_key(w) for w in lock}),
            windows_param(windows),
            None if judged is None else list(judged),
            exact,
            policies_seen,
            _holds_param(holds),
        ),
    )
    row = await cursor.fetchone()
    assert row is not None
    return Reserved(int(row[0]), list(row[1]), bool(row[2]))


async def insert_holds(conn: Connection, holds: Sequence[Hold]) -> None:
    if holds:
        await conn.execute(_INSERT_HOLDS.format(holds="%s").encode(), (_holds_param(holds),))


def _holds_param(holds: Sequence[Hold]) -> str:
    return _json(
        {
            "reservation_id": h.reservation_id,
            "policy_id": h.window.policy.policy_id,
            "window_key": h.window.key,
            "window_start": h.window.start.isoformat(),
            "amount": str(h.amount),
            "expires_at": h.expires_at.isoformat(),
            "caller": h.caller,
            "window_end": h.window.end.isoformat(),
        }
        for h in holds
    )


def _json(rows: Iterable[dict[str, str]]) -> str:
    return json.dumps(list(rows))


async def release(
    conn: Connection, reservation_id: str, *, caller: str, any_caller: bool = False
) -> int:
    """Drop a reservation's holds (the call failed or was abandoned) if ``caller`` made
    them, or whoever did with ``any_caller``; returns how many. ``ValueError`` when they
    belong to another caller: a host cannot free budget that another one holds."""
    cursor = await conn.execute(
        """
        WITH mine AS (
            DELETE FROM reservation_holds
            WHERE reservation_id = %(id)s AND (%(any)s OR caller = %(caller)s)
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM mine),
               EXISTS (SELECT FROM reservation_holds WHERE reservation_id = %(id)s
                       AND NOT (%(any)s OR caller IS NOT DISTINCT FROM %(caller)s))
        """,
        {"id": reservation_id, "caller": caller, "any": any_caller},
    )
    row = await cursor.fetchone()
    assert row is not None
    released, foreign = int(row[0]), bool(row[1])
    if foreign:
        raise ValueError(
            f"reservation {reservation_id} {FOREIGN}: only that caller (or the services' own"
            " credential) may release it"
        )
    return released


async def foreign_holds(conn: Connection, reservation_ids: Iterable[str], caller: str) -> set[str]:
    """Those of ``reservation_ids`` whose holds another caller made: a usage event naming
    one would settle (free) budget that caller holds."""
    cursor = await conn.execute(
        "SELECT DISTINCT reservation_id FROM reservation_holds"
        " WHERE reservation_id = ANY(%s) AND caller IS DISTINCT FROM %s",
        (list(reservation_ids), caller),
    )
    return {str(row[0]) for row in await cursor.fetchall()}


async def release_finished(conn: Connection) -> tuple[int, int]:
    """Delete holds that expired or whose usage reached the live ledger at a price
    (``SETTLED``: settled by a rebuilt version, which leaves deletion to this job, or an
    unpriced call's, once repriced). Returns (expired, settled)."""
    cursor = await conn.execute(
        f"""
        WITH gone AS (
            DELETE FROM reservation_holds h
            WHERE h.expires_at <= now() OR {SETTLED}
            RETURNING h.expires_at <= now() AS expired
        )
        SELECT count(*) FILTER (WHERE expired), count(*) FILTER (WHERE NOT expired) FROM gone
        """.encode()
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def open_reservations(conn: Connection) -> int:
    """Reservations holding budget now: unexpired, and not yet settled by the live ledger
    (which deletes a hold when its usage arrives) or released."""
    cursor = await conn.execute(
        "SELECT count(DISTINCT reservation_id) FROM reservation_holds WHERE expires_at > now()"
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])
