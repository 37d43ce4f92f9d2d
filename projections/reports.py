"""The report materializer: quarter-hour and daily rollups of usage, so reports never scan
raw events.

Every usage event adds to one row per dimension in each grain: ``total``, ``provider``,
``model`` (keyed by provider and model), ``user``, ``project`` and ``kind``, a provider
and a model by their keys (``canonical_key``: "OpenAI" is "openai", "GPT-4o" is
"gpt-4o"). Days are UTC days; quarter hours (the spend projection's buckets) hold every time zone's
midnight, 45-minute offsets included, so a report's local days are exact. The usage ledger
shared with spend and history (``projections/ledger.py``: one row per event, with its
dimensions) makes apply idempotent beyond JetStream's duplicate window and lets a
correction (``UsageRepriced``) move its event's cost in every row it counted in.
Aggregation runs in PostgreSQL, one statement per batch, as in the spend projection.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import ClassVar

from events import UsageRecorded, UsageRepriced
from projections.engine.projection import Applied, Connection, Projection, physical
from projections.ledger import SHARED_LEDGER, WHERE, Booked, first_usage
from projections.spend import BUCKET_SQL, MEASURES
from projections.usage_rows import USAGE_MEASURES, Staged

__all__ = ["DIMENSIONS", "GRAINS", "ReportsProjection"]

# (dimension, first key, second key) over a row with provider, model, user_id, project_id
# and kind; an absent user or project is the key ''.
DIMENSIONS = (
    ("total", "''", "''"),
    ("provider", "provider", "''"),
    ("model", "provider", "model"),
    ("user", "user_id", "''"),
    ("project", "project_id", "''"),
    ("kind", "kind", "''"),
)
GRAINS = ("quarter", "day")
_UTC_DAY = "date_trunc('day', {} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"


class ReportsProjection(Projection):
    name: ClassVar[str] = "reports"
    tables = ("report_quarterly", "report_daily")
    event_types = (UsageRecorded, UsageRepriced)
    ledger = SHARED_LEDGER

    def ddl(self, version: int) -> list[str]:
        measures = ",\n".join(f"{name} {sql_type} NOT NULL" for name, sql_type, _ in MEASURES)
        return [
            f"""CREATE TABLE {physical(table, version)} (
                dimension text NOT NULL,
                key1 text NOT NULL,
                key2 text NOT NULL,
                period_start timestamptz NOT NULL,
                {measures},
                PRIMARY KEY (dimension, period_start, key1, key2))"""
            for table in self.tables
        ]

    async def apply(self, conn: Connection, version: int, batch: Sequence[Applied]) -> None:
        staged = Staged.of(batch)
        if staged is not None:
            await self.roll_up(conn, version, staged)
        booked = await SHARED_LEDGER.booked(conn, batch)
        await self._add_corrections(conn, version, [b for b in booked if b.changes_totals])

    async def roll_up(self, conn: Connection, version: int, staged: Staged) -> None:
        """Roll up the staged usage events (``usage_rows.stage``) ``staged`` gives (the
        report benchmark loads rows this way too)."""
        quarterly, daily = (physical(t, version) for t in self.tables)
        names = ", ".join(name for name, _, _ in MEASURES)
        cell_sums = ", ".join(f"{aggregate} AS {n}" for n, _, aggregate in MEASURES)
        regroup = ", ".join(f"sum({n}) AS {n}" for n, _, _ in MEASURES)
        usage = ", ".join(f"b.{name}" for name, _ in USAGE_MEASURES)
        fan_out = ", ".join(f"('{d}', {k1}, {k2})" for d, k1, k2 in DIMENSIONS)

        def upsert(table: str) -> str:
            updates = ", ".join(f"{n} = {table}.{n} + EXCLUDED.{n}" for n, _, _ in MEASURES)
            return f"ON CONFLICT (dimension, period_start, key1, key2) DO UPDATE SET {updates}"

        await conn.execute(
            f"""
            WITH batch AS (
                -- each event at its first appearance in the log: re-sends count nowhere
                SELECT b.occurred_at, b.cost, b.provider_key AS provider, b.model_key AS model,
                       coalesce(b.user_id, '') AS user_id,
                       coalesce(b.project_id, '') AS project_id, b.kind, {usage}, b.image_count
                FROM {first_usage(SHARED_LEDGER.usage)}
            ), cells AS (
                SELECT provider, model, user_id, project_id, kind,
                       {BUCKET_SQL.format("occurred_at")} AS quarter,
                       {cell_sums}
                FROM batch
                GROUP BY provider, model, user_id, project_id, kind, quarter
            ), rolled AS (
                SELECT dimension, key1, key2, quarter, {regroup}
                FROM cells CROSS JOIN LATERAL (VALUES {fan_out}) AS d(dimension, key1, key2)
                GROUP BY dimension, key1, key2, quarter
            ), days AS (
                INSERT INTO {daily} (dimension, key1, key2, period_start, {names})
                SELECT dimension, key1, key2, {_UTC_DAY.format("quarter")}, {regroup}
                FROM rolled GROUP BY 1, 2, 3, 4
                {upsert(daily)}
            )
            INSERT INTO {quarterly} (dimension, key1, key2, period_start, {names})
            SELECT * FROM rolled
            {upsert(quarterly)}
            """.encode(),
            staged.params,
        )

    async def _add_corrections(self, conn: Connection, version: int, booked: list[Booked]) -> None:
        """Each correction's change of cost in every rollup row its event counted in (as
        the ledger recorded it), one statement per grain for the batch."""
        if not booked:
            return
        quarterly, daily = (physical(t, version) for t in self.tables)
        names = ", ".join(name for name, _, _ in MEASURES)
        zeros = ", ".join("0" for _ in MEASURES[3:])
        fan_out = ", ".join(f"('{d}', {k1}, {k2})" for d, k1, k2 in DIMENSIONS)
        rows = json.dumps(
            [
                {
                    "cost": str(b.cost_delta),
                    "unpriced": b.unpriced_delta,
                    **{column: b.original[column] or "" for column in WHERE[1:]},
                    "occurred_at": b.occurred_at.isoformat(),
                }
                for b in booked
            ]
        )
        for table, grain in ((quarterly, BUCKET_SQL), (daily, _UTC_DAY)):
            await conn.execute(
                f"""
                INSERT INTO {table} (dimension, key1, key2, period_start, {names})
                SELECT dimension, key1, key2, {grain.format("occurred_at")} AS period,
                       sum(cost), 0, sum(unpriced), {zeros}
                FROM jsonb_to_recordset(%s::jsonb) AS e(occurred_at timestamptz, cost numeric,
                     unpriced bigint, provider text, model text, user_id text,
                     project_id text, kind text)
                CROSS JOIN LATERAL (VALUES {fan_out}) AS d(dimension, key1, key2)
                GROUP BY dimension, key1, key2, period
                ON CONFLICT (dimension, period_start, key1, key2) DO UPDATE
                SET cost = {table}.cost + EXCLUDED.cost,
                    unpriced_requests = {table}.unpriced_requests + EXCLUDED.unpriced_requests
                """.encode(),
                (rows,),
            )
