"""Spend: cost and usage totals per scope (global, user, provider, model, project) and
calendar period (day, ISO week from Monday, month; UTC), assigned by each event's
``occurred_at``.

Totals are kept per UTC day (``spend_daily``); weeks and months are sums of their days
(the ``spend_totals`` view has all three). An event thus updates 5 rows, not 15, which
is what a small batch costs the database; a month is at most 31 rows to add.

The ledger (one row per event id) makes apply idempotent beyond JetStream's duplicate
window: only events that enter the ledger for the first time are added to the totals.
Aggregation runs in PostgreSQL, in one statement per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import ClassVar

from events import UsageRecorded, UsageRepriced
from projections.base import Applied, Connection, Projection, physical
from projections.usage_rows import USAGE_MEASURES, usage_rows

__all__ = ["GLOBAL_KEY", "MEASURES", "SCOPES", "SpendProjection"]

SCOPES = ("global", "user", "provider", "model", "project")
GLOBAL_KEY = "*"

# Summed columns of the totals table: (name, SQL type, aggregate over the applied events).
MEASURES = (
    ("cost", "numeric", "coalesce(sum(cost), 0)"),
    ("requests", "bigint", "count(*)"),
    ("unpriced_requests", "bigint", "count(*) FILTER (WHERE cost IS NULL)"),
    *((name, sql_type, f"sum({name})") for name, sql_type in USAGE_MEASURES),
    ("images", "bigint", "coalesce(sum((images ->> 'count')::bigint), 0)"),
)


class SpendProjection(Projection):
    name: ClassVar[str] = "spend"
    tables: ClassVar[tuple[str, ...]] = ("spend_daily", "spend_ledger")
    event_types = (UsageRecorded, UsageRepriced)

    def ddl(self, version: int) -> list[str]:
        totals, ledger = (physical(t, version) for t in self.tables)
        measures = ",\n".join(f"{name} {sql_type} NOT NULL" for name, sql_type, _ in MEASURES)
        return [
            f"""CREATE TABLE {totals} (
                scope text NOT NULL,
                scope_key text NOT NULL,
                day date NOT NULL,
                {measures},
                PRIMARY KEY (scope, scope_key, day))""",
            # One row per usage event (cost: its current cost, corrections included) and
            # per correction (corrects: the usage event it repriced).
            f"""CREATE TABLE {ledger} (
                event_id uuid PRIMARY KEY,
                stream_seq bigint NOT NULL,
                occurred_at timestamptz NOT NULL,
                cost numeric,
                corrects uuid)""",
        ]

    def views(self, version: int) -> dict[str, str]:
        daily, ledger = (physical(t, version) for t in self.tables)
        names = ", ".join(name for name, _, _ in MEASURES)
        sums = ", ".join(f"sum({name})::{sql_type} AS {name}" for name, sql_type, _ in MEASURES)
        rollups = " UNION ALL ".join(
            f"SELECT scope, scope_key, '{period}' AS period,"
            f" date_trunc('{unit}', day::timestamp)::date AS period_start, {sums}"
            f" FROM {daily} GROUP BY scope, scope_key, 4"
            for period, unit in (("weekly", "week"), ("monthly", "month"))
        )
        return {
            "spend_daily": f"SELECT * FROM {daily}",
            "spend_ledger": f"SELECT * FROM {ledger}",
            "spend_totals": (
                f"SELECT scope, scope_key, 'daily' AS period, day AS period_start, {names}"
                f" FROM {daily} UNION ALL {rollups}"
            ),
        }

    async def apply(self, conn: Connection, version: int, batch: Sequence[Applied]) -> None:
        # Corrections always follow the events they correct in the log, so applying the
        # batch's usage first and its corrections after keeps log order where it matters.
        await self._apply_usage(conn, version, batch)
        for applied in batch:
            if isinstance(applied.event, UsageRepriced):
                await self._apply_correction(conn, version, applied.stream_seq, applied.event)

    async def _apply_usage(self, conn: Connection, version: int, batch: Sequence[Applied]) -> None:
        source = usage_rows(batch)
        if source is None:
            return
        rows, params = source
        totals, ledger = (physical(t, version) for t in self.tables)
        names = ", ".join(name for name, _, _ in MEASURES)
        cell_sums = ", ".join(f"{aggregate} AS {n}" for n, _, aggregate in MEASURES)
        regroup = ", ".join(f"sum({n})" for n, _, _ in MEASURES)
        updates = ", ".join(f"{n} = {totals}.{n} + EXCLUDED.{n}" for n, _, _ in MEASURES)
        usage = ", ".join(f"u.{name}" for name, _ in USAGE_MEASURES)
        await conn.execute(
            f"""
            WITH batch AS (
                SELECT e.event_id, s.stream_seq, e.occurred_at, e.cost, e.provider, e.model,
                       e.user_id, e.project_id, {usage}, u.images
                FROM {rows}
            ), fresh AS (
                INSERT INTO {ledger} (event_id, stream_seq, occurred_at, cost)
                SELECT DISTINCT ON (event_id) event_id, stream_seq, occurred_at, cost
                FROM batch ORDER BY event_id, stream_seq
                ON CONFLICT (event_id) DO NOTHING
                RETURNING event_id, stream_seq
            ), cells AS (
                -- sum each (user, project, provider, model, day) first: few rows to fan out
                SELECT user_id, project_id, provider, model,
                       (occurred_at AT TIME ZONE 'UTC')::date AS day, {cell_sums}
                FROM batch JOIN fresh USING (event_id, stream_seq)
                GROUP BY user_id, project_id, provider, model, day
            )
            INSERT INTO {totals} (scope, scope_key, day, {names})
            SELECT scope, scope_key, day, {regroup}
            FROM cells
            CROSS JOIN LATERAL (VALUES ('global', '{GLOBAL_KEY}'), ('user', user_id),
                ('provider', provider), ('model', model), ('project', project_id))
                AS scopes(scope, scope_key)
            WHERE scope_key <> ''
            GROUP BY scope, scope_key, day
            ON CONFLICT (scope, scope_key, day) DO UPDATE SET {updates}
            """.encode(),
            params,
        )

    async def _apply_correction(
        self, conn: Connection, version: int, stream_seq: int, event: UsageRepriced
    ) -> None:
        """Move the corrected event's cost to the new one in every daily total it counts in.
        The delta is taken against the ledger's current cost, so a correction applied
        twice, or one that changes nothing, adds nothing."""
        totals, ledger = (physical(t, version) for t in self.tables)
        row = await (
            await conn.execute(
                f"""
                WITH claimed AS (
                    INSERT INTO {ledger} (event_id, stream_seq, occurred_at, corrects)
                    VALUES (%(id)s, %(seq)s, %(at)s, %(corrects)s)
                    ON CONFLICT (event_id) DO NOTHING RETURNING event_id
                ), previous AS (
                    SELECT cost FROM {ledger} WHERE event_id = %(corrects)s
                ), updated AS (
                    UPDATE {ledger} SET cost = %(cost)s
                    WHERE event_id = %(corrects)s AND EXISTS (SELECT FROM claimed)
                    RETURNING 1
                )
                SELECT (SELECT cost FROM previous) FROM updated
                """.encode(),
                {
                    "id": event.event_id,
                    "seq": stream_seq,
                    "at": event.occurred_at,
                    "corrects": event.corrects,
                    "cost": event.cost,
                },
            )
        ).fetchone()
        if row is None:
            return  # already applied, or the corrected event is unknown
        previous: Decimal | None = row[0]
        cost_delta = (event.cost or Decimal(0)) - (previous or Decimal(0))
        unpriced_delta = (event.cost is None) - (previous is None)
        if not cost_delta and not unpriced_delta:
            return
        zeros = ", ".join("0" for _ in MEASURES[3:])
        names = ", ".join(name for name, _, _ in MEASURES)
        await conn.execute(
            f"""
            INSERT INTO {totals} (scope, scope_key, day, {names})
            SELECT scope, scope_key, %(day)s, %(cost)s, 0, %(unpriced)s, {zeros}
            FROM (VALUES ('global', '{GLOBAL_KEY}'), ('user', %(user)s), ('provider', %(provider)s),
                  ('model', %(model)s), ('project', %(project)s)) AS scopes(scope, scope_key)
            WHERE scope_key <> ''
            ON CONFLICT (scope, scope_key, day) DO UPDATE
            SET cost = {totals}.cost + EXCLUDED.cost,
                unpriced_requests = {totals}.unpriced_requests + EXCLUDED.unpriced_requests
            """.encode(),
            {
                "cost": cost_delta,
                "unpriced": unpriced_delta,
                "user": event.user_id,
                "provider": event.provider,
                "model": event.model,
                "project": event.project_id,
                "day": event.occurred_at.date(),
            },
        )
