"""Usage history: one row per usage event, indexed for filtering by time, provider, model,
user and project (the seed's "Usage History" view and exports)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import ClassVar

from events import UsageRecorded, UsageRepriced
from projections.engine.projection import Applied, Connection, Projection, physical
from projections.ledger import SHARED_LEDGER
from projections.usage_rows import SOURCE, USAGE_MEASURES, usage_rows

__all__ = ["HistoryProjection"]

# (column, SQL type, expression over the usage row source)
_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("event_id", "uuid PRIMARY KEY", "e.event_id"),
    ("stream_seq", "bigint NOT NULL", "s.stream_seq"),
    ("occurred_at", "timestamptz NOT NULL", "e.occurred_at"),
    ("provider", "text NOT NULL", "e.provider"),
    ("model", "text NOT NULL", "e.model"),
    ("kind", "text NOT NULL", "e.kind"),
    ("user_id", "text", "e.user_id"),
    ("project_id", "text", "e.project_id"),
    ("cost", "numeric", "e.cost"),
    ("unpriced_reason", "text", "e.unpriced_reason"),
    *((name, f"{sql_type} NOT NULL", f"u.{name}") for name, sql_type in USAGE_MEASURES),
    ("image_count", "integer", "(u.images ->> 'count')::integer"),
    ("image_size", "text", "u.images ->> 'size'"),
    ("image_quality", "text", "u.images ->> 'quality'"),
    ("tags", "jsonb NOT NULL", "e.tags"),
    ("price", "jsonb", "e.price"),
)
_FILTERED = ("provider", "model", "user_id", "project_id")


class HistoryProjection(Projection):
    name: ClassVar[str] = "history"
    tables = ("usage_history",)
    event_types = (UsageRecorded, UsageRepriced)
    ledger = SHARED_LEDGER

    def ddl(self, version: int) -> list[str]:
        table = physical(self.tables[0], version)
        columns = ",\n".join(f"{name} {sql_type}" for name, sql_type, _ in _COLUMNS)
        return [
            f"CREATE TABLE {table} ({columns})",
            f"CREATE INDEX {table}_occurred_at ON {table} (occurred_at)",
            *(
                f"CREATE INDEX {table}_{column} ON {table} ({column}, occurred_at)"
                for column in _FILTERED
            ),
        ]

    async def apply(self, conn: Connection, version: int, batch: Sequence[Applied]) -> None:
        table = physical(self.tables[0], version)
        params = usage_rows(batch)
        if params is not None:
            # The event id is the key: a re-send finds its first appearance's row.
            names = ", ".join(name for name, _, _ in _COLUMNS)
            values = ", ".join(expression for _, _, expression in _COLUMNS)
            await conn.execute(
                f"INSERT INTO {table} ({names}) SELECT {values} FROM {SOURCE}"
                " ON CONFLICT (event_id) DO NOTHING".encode(),
                params,
            )
        await self._correct(conn, table, batch)

    async def _correct(self, conn: Connection, table: str, batch: Sequence[Applied]) -> None:
        """A row shows its event's current cost and where that price came from: the
        latest of the batch's corrections of it at their first appearance."""
        booked = await SHARED_LEDGER.booked(conn, batch)
        if not booked:
            return
        latest = {b.correction.corrects: b.correction for b in booked}
        await conn.execute(
            f"""UPDATE {table} h SET cost = c.cost, price = c.price,
                unpriced_reason = c.unpriced_reason
            FROM jsonb_to_recordset(%s::jsonb) AS c(corrects uuid, cost numeric, price jsonb,
                 unpriced_reason text)
            WHERE h.event_id = c.corrects""".encode(),
            (
                json.dumps(
                    [
                        {
                            "corrects": str(corrects),
                            "cost": None if fix.cost is None else str(fix.cost),
                            "price": None
                            if fix.price is None
                            else fix.price.model_dump(mode="json"),
                            "unpriced_reason": fix.unpriced_reason,
                        }
                        for corrects, fix in latest.items()
                    ]
                ),
            ),
        )
