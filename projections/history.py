"""Usage history: one row per usage event, indexed for filtering by time, provider, model,
user and project (the seed's "Usage History" view and exports)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from events import UsageRecorded, UsageRepriced
from projections.engine.projection import Applied, Connection, Projection, physical
from projections.ledger import Ledger, corrections_ddl
from projections.usage_rows import USAGE_MEASURES, usage_rows

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
# Set from a correction besides the cost (the ledger rule of projections/ledger.py).
_CORRECTED = {"price": "price", "unpriced_reason": "unpriced_reason"}


class HistoryProjection(Projection):
    name: ClassVar[str] = "history"
    tables = ("usage_history", "usage_history_corrections")
    event_types = (UsageRecorded, UsageRepriced)

    def ddl(self, version: int) -> list[str]:
        table, corrections = (physical(t, version) for t in self.tables)
        columns = ",\n".join(f"{name} {sql_type}" for name, sql_type, _ in _COLUMNS)
        return [f"CREATE TABLE {table} ({columns})", *corrections_ddl(corrections)]

    def indexes(self, version: int) -> list[str]:
        table = physical(self.tables[0], version)
        return [
            f"CREATE INDEX {table}_occurred_at ON {table} (occurred_at)",
            *(
                f"CREATE INDEX {table}_{column} ON {table} ({column}, occurred_at)"
                for column in _FILTERED
            ),
        ]

    async def apply(self, conn: Connection, version: int, batch: Sequence[Applied]) -> None:
        table, corrections = (physical(t, version) for t in self.tables)
        await self._insert_usage(conn, table, batch)
        # A row shows its event's current cost and where that price came from.
        await Ledger(table, corrections, ("occurred_at",)).correct(conn, batch, also_set=_CORRECTED)

    async def _insert_usage(self, conn: Connection, table: str, batch: Sequence[Applied]) -> None:
        source = usage_rows(batch)
        if source is None:
            return
        rows, params = source
        names = ", ".join(name for name, _, _ in _COLUMNS)
        values = ", ".join(expression for _, _, expression in _COLUMNS)
        await conn.execute(
            f"INSERT INTO {table} ({names}) SELECT {values} FROM {rows}"
            " ON CONFLICT (event_id) DO NOTHING".encode(),
            params,
        )
