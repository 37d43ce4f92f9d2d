"""Spend: cost and usage totals per scope (global, user, provider, model, project) and
calendar period (day, ISO week from Monday, month; UTC), assigned by each event's
``occurred_at``. A provider's and a model's spend is counted under their keys
(``canonical_key``: "OpenAI" is "openai", "GPT-4o" is "gpt-4o"), as their policies match
them.

Totals are kept per quarter hour (``spend_buckets``): every time zone's midnight and every
custom policy range falls on one, so the enforcer sums any policy window exactly. Days,
weeks and months are sums of buckets (the ``spend_daily`` and ``spend_totals`` views). An
event updates 5 rows, one per scope.

The usage ledger (``projections/ledger.py``, shared with history and report rollups)
makes apply idempotent beyond JetStream's duplicate window: an event counts at its first
appearance in the log only. It also records each event's ``reservation_id``: a
reservation whose usage this version has counted (the ``spend_ledger`` view) is settled,
and the live version deletes its holds in the same transaction. Corrections follow the
ledger rule: each moves its event's cost in the buckets and scopes where the ledger
counted that event. Aggregation runs in PostgreSQL, in one statement per batch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from events import UsageRecorded, UsageRepriced
from events.policy import GLOBAL_SCOPE_KEY
from projections.engine.projection import Applied, Connection, Projection, physical
from projections.ledger import (
    COUNTING_LEDGER,
    SHARED_LEDGER,
    WHERE,
    Booked,
    Ledger,
    Recorded,
    first_usage,
    recorded_usage,
)
from projections.usage_rows import USAGE_MEASURES, Staged

__all__ = [
    "BUCKET_SQL",
    "COST_MEASURES",
    "MEASURES",
    "SCOPES",
    "Booking",
    "SpendProjection",
]

SCOPES = ("global", "user", "provider", "model", "project")
BUCKET_SQL = "date_bin('15 minutes', {}, timestamptz '2000-01-01 00:00+00')"


# Summed columns of the totals table: (name, SQL type, aggregate over the applied events).
# Usage sums are numeric, not bigint: a bigint bucket overflows after 9.2 million calls
# at MAX_TOKENS, and then refuses every later call of its quarter hour. Counts of calls
# (and of images, at most MAX_IMAGES each) stay far inside bigint.
MEASURES = (
    ("cost", "numeric", "coalesce(sum(cost), 0)"),
    ("requests", "bigint", "count(*)"),
    ("unpriced_requests", "bigint", "count(*) FILTER (WHERE cost IS NULL)"),
    *((name, "numeric", f"sum({name})") for name, _ in USAGE_MEASURES),
    ("images", "bigint", "coalesce(sum(image_count), 0)"),
)
COST_MEASURES = MEASURES[:3]
"""Cost, requests and unpriced requests: what alerts are about."""


@dataclass(frozen=True, slots=True)
class Booking:
    """What booking a batch did: its corrections at their first appearance, and whether
    any usage it counted has no price (what the alert evaluator's unpriced-usage rule
    looks for; known from the counting statement, so a batch without any costs no more)."""

    corrections: list[Booked]
    unpriced: bool


class SpendProjection(Projection):
    """``prefix`` names the tables and views (``<prefix>_buckets``, ...), so another
    projection can keep its own spend totals with this code: the alert evaluator does,
    with only the cost measures (``cost_only``: cost, requests, unpriced requests),
    counting what the ledger recorded at the batch's stream sequences
    (``counts_recorded``: ``ledger.COUNTING_LEDGER``) rather than the staged batch. Only
    the live spend projection settles reservations."""

    name: ClassVar[str] = "spend"
    event_types = (UsageRecorded, UsageRepriced)

    def __init__(
        self,
        prefix: str = "spend",
        *,
        counts_recorded: bool = False,
        settles_reservations: bool = True,
        cost_only: bool = False,
    ) -> None:
        self.prefix = prefix
        self.counts_recorded = counts_recorded
        self.measures = COST_MEASURES if cost_only else MEASURES
        self.ledger: Ledger = COUNTING_LEDGER if counts_recorded else SHARED_LEDGER
        self.tables = (f"{prefix}_buckets",)
        self.settles_reservations = settles_reservations

    def ddl(self, version: int) -> list[str]:
        totals = physical(self.tables[0], version)
        measures = ",\n".join(f"{name} {sql_type} NOT NULL" for name, sql_type, _ in self.measures)
        return [
            f"""CREATE TABLE {totals} (
                scope text NOT NULL,
                scope_key text NOT NULL,
                bucket_start timestamptz NOT NULL,
                {measures},
                PRIMARY KEY (scope, scope_key, bucket_start))"""
        ]

    def views(self, version: int) -> dict[str, str]:
        buckets = physical(self.tables[0], version)
        names = ", ".join(name for name, _, _ in self.measures)
        sums = ", ".join(f"sum({n})::{sql_type} AS {n}" for n, sql_type, _ in self.measures)
        utc_day = "(bucket_start AT TIME ZONE 'UTC')::date"
        daily = f"SELECT scope, scope_key, {utc_day} AS day, {sums} FROM {buckets} GROUP BY 1, 2, 3"
        rollups = " UNION ALL ".join(
            f"SELECT scope, scope_key, '{period}' AS period,"
            f" date_trunc('{unit}', {utc_day}::timestamp)::date AS period_start, {sums}"
            f" FROM {buckets} GROUP BY scope, scope_key, 4"
            for period, unit in (("daily", "day"), ("weekly", "week"), ("monthly", "month"))
        )
        # What this version has counted: the ledger may run ahead of it.
        counted = (
            " WHERE stream_seq <= (SELECT stream_seq FROM projection_checkpoints"
            f" WHERE name = '{self.name}' AND version = {version})"
        )
        ledger = (
            {}
            if self.counts_recorded  # the evaluator's position is its own checkpoint's
            else {
                f"{self.prefix}_ledger": f"SELECT * FROM {self.ledger.usage}{counted}",
                f"{self.prefix}_corrections": f"SELECT * FROM {self.ledger.corrections}{counted}",
            }
        )
        return {
            f"{self.prefix}_buckets": f"SELECT * FROM {buckets}",
            **ledger,
            f"{self.prefix}_daily": daily,
            f"{self.prefix}_totals": f"SELECT scope, scope_key, period, period_start, {names}"
            f" FROM ({rollups}) AS totals",
        }

    async def apply(self, conn: Connection, version: int, batch: Sequence[Applied]) -> None:
        await self.book(conn, version, batch)

    async def book(self, conn: Connection, version: int, batch: Sequence[Applied]) -> Booking:
        """Apply the batch.

        Corrections always follow the events they correct in the log, so applying the
        batch's usage first and its corrections after keeps log order where it matters."""
        unpriced = await self._apply_usage(conn, version, batch)
        booked = await self.ledger.booked(conn, batch)
        await self._add_corrections(conn, version, [b for b in booked if b.changes_totals])
        return Booking(booked, unpriced or any(b.unpriced_delta > 0 for b in booked))

    async def _apply_usage(self, conn: Connection, version: int, batch: Sequence[Applied]) -> bool:
        """Count the batch's usage; whether any of it has no price."""
        if self.counts_recorded:
            if not any(a.event_type is UsageRecorded for a in batch):
                return False
            rows, params = recorded_usage(self.ledger.usage, "b"), Recorded.of(batch).params
            keys = "b.provider, b.model"  # the ledger keeps their keys
        else:
            staged = Staged.of(batch)
            if staged is None:
                return False
            rows, params = first_usage(self.ledger.usage), staged.params
            keys = "b.provider_key AS provider, b.model_key AS model"
        totals = physical(self.tables[0], version)
        names = ", ".join(name for name, _, _ in self.measures)
        cell_sums = ", ".join(f"{aggregate} AS {n}" for n, _, aggregate in self.measures)
        regroup = ", ".join(f"sum({n})" for n, _, _ in self.measures)
        updates = ", ".join(f"{n} = {totals}.{n} + EXCLUDED.{n}" for n, _, _ in self.measures)
        usage = "".join(
            f", b.{name}"
            for name in (*(n for n, _ in USAGE_MEASURES), "image_count")
            if self.measures is MEASURES
        )
        cursor = await conn.execute(
            f"""
            WITH batch AS (
                -- each event at its first appearance in the log: re-sends count nowhere
                SELECT b.occurred_at, b.cost, {keys}, b.user_id, b.project_id,
                       b.reservation_id{usage}
                FROM {rows}
            ){self._settle(version)}, cells AS (
                -- sum each (user, project, provider, model, bucket) first: few rows to fan out
                SELECT user_id, project_id, provider, model,
                       {BUCKET_SQL.format("occurred_at")} AS bucket_start, {cell_sums}
                FROM batch
                GROUP BY user_id, project_id, provider, model, bucket_start
            ), counted AS (
                INSERT INTO {totals} (scope, scope_key, bucket_start, {names})
                SELECT scope, scope_key, bucket_start, {regroup}
                FROM cells
                CROSS JOIN LATERAL (VALUES ('global', '{GLOBAL_SCOPE_KEY}'), ('user', user_id),
                    ('provider', provider), ('model', model), ('project', project_id))
                    AS scopes(scope, scope_key)
                WHERE scope_key <> ''
                GROUP BY scope, scope_key, bucket_start
                ON CONFLICT (scope, scope_key, bucket_start) DO UPDATE SET {updates}
            )
            SELECT EXISTS (SELECT FROM batch WHERE cost IS NULL)
            """.encode(),
            params,
        )
        row = await cursor.fetchone()
        return bool(row and row[0])

    def _settle(self, version: int) -> str:
        if not self.settles_reservations:
            return ""
        # Only the live version: a rebuild must not release what the live one has not
        # counted yet (readers also treat ledgered reservations as settled). An unpriced
        # call counts nothing: its hold stays, past its expiry, until the call is priced
        # (``projections.windows.SETTLED``) or its window ends, so a BLOCK limit still
        # counts its estimate.
        live = (
            "EXISTS (SELECT FROM projection_registry"
            f" WHERE name = '{self.name}' AND active_version = {version})"
        )
        return f""", settled AS (
                DELETE FROM reservation_holds
                WHERE reservation_id IN (SELECT reservation_id FROM batch
                                         WHERE cost IS NOT NULL)
                  AND {live}
            ), held AS (
                UPDATE reservation_holds
                SET expires_at = greatest(expires_at, coalesce(window_end, expires_at))
                WHERE reservation_id IN (SELECT reservation_id FROM batch WHERE cost IS NULL)
                  AND {live}
            )"""

    async def _add_corrections(self, conn: Connection, version: int, booked: list[Booked]) -> None:
        """Each correction's change of cost, in the bucket and scopes of the event it
        corrected (as the ledger recorded them), one statement for the batch."""
        if not booked:
            return
        totals = physical(self.tables[0], version)
        names = ", ".join(name for name, _, _ in self.measures)
        zeros = "".join(", 0" for _ in self.measures[3:])
        rows = [
            {
                "at": b.occurred_at.isoformat(),
                "cost": str(b.cost_delta),
                "unpriced": b.unpriced_delta,
                **{column: b.original[column] for column in WHERE[1:5]},
            }
            for b in booked
        ]
        await conn.execute(
            f"""
            INSERT INTO {totals} (scope, scope_key, bucket_start, {names})
            SELECT scope, scope_key, {BUCKET_SQL.format("at")} AS bucket, sum(cost), 0,
                   sum(unpriced){zeros}
            FROM jsonb_to_recordset(%s::jsonb) AS c(at timestamptz, cost numeric,
                 unpriced bigint, provider text, model text, user_id text, project_id text)
            CROSS JOIN LATERAL (VALUES ('global', '{GLOBAL_SCOPE_KEY}'), ('user', user_id),
                ('provider', provider), ('model', model), ('project', project_id))
                AS scopes(scope, scope_key)
            WHERE scope_key <> ''
            GROUP BY scope, scope_key, bucket
            ON CONFLICT (scope, scope_key, bucket_start) DO UPDATE
            SET cost = {totals}.cost + EXCLUDED.cost,
                unpriced_requests = {totals}.unpriced_requests + EXCLUDED.unpriced_requests
            """.encode(),
            (json.dumps(rows),),
        )
