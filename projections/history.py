"""Usage history: one row per usage event, indexed for filtering by time, provider, model,
user and project (the seed's "Usage History" view and exports). A row keeps its event's
``provider`` and ``model`` as the producer spelt them; filters by provider and model match
its ``provider_key`` and ``model_key`` (``canonical_key``: "OpenAI" is "openai", "GPT-4o"
is "gpt-4o"), as spend is counted. Each row names who
published its event (``publisher``: the NATS user, or the HTTP API's ``api-key-<id>``, by
the subject it came on; null for events of the bare subject), so an operator sees which
credential reported a call."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import ClassVar

from events import UsageRecorded, UsageRepriced
from projections.engine.projection import Applied, Connection, Projection, physical
from projections.ledger import SHARED_LEDGER
from projections.usage_rows import STAGED, STAGED_COLUMNS, Staged, staged_rows

__all__ = ["HistoryProjection"]

_NULLABLE = frozenset(
    (
        "user_id",
        "project_id",
        "cost",
        "unpriced_reason",
        "price",
        "publisher",
        *(c for c, _ in STAGED_COLUMNS if c.startswith("image_")),
    )
)
# (column, SQL type): the staged columns (``usage_rows``) but the reservation
_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (
        name,
        "uuid PRIMARY KEY"
        if name == "event_id"
        else f"{sql_type}{'' if name in _NULLABLE else ' NOT NULL'}",
    )
    for name, sql_type in STAGED_COLUMNS
    if name != "reservation_id"
)
_FILTERED = ("provider_key", "model_key", "user_id", "project_id")


class HistoryProjection(Projection):
    name: ClassVar[str] = "history"
    tables = ("usage_history",)
    event_types = (UsageRecorded, UsageRepriced)
    ledger = SHARED_LEDGER

    def ddl(self, version: int) -> list[str]:
        table = physical(self.tables[0], version)
        columns = ",\n".join(f"{name} {sql_type}" for name, sql_type in _COLUMNS)
        return [f"CREATE TABLE {table} ({columns})"]

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
        table = physical(self.tables[0], version)
        staged = Staged.of(batch)
        if staged is not None:
            # The event id is the key: a re-send finds its first appearance's row.
            names = ", ".join(name for name, _ in _COLUMNS)
            await conn.execute(
                f"INSERT INTO {table} ({names}) SELECT {names} FROM {STAGED}"
                f" WHERE {staged_rows()} ORDER BY stream_seq"
                " ON CONFLICT (event_id) DO NOTHING".encode(),
                staged.params,
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
