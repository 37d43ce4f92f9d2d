"""Spend: cost and usage totals per scope (global, user, provider, model, project) and
calendar period (day, ISO week, month; UTC), assigned by each event's ``occurred_at``.

The ledger (one row per event id) makes apply idempotent beyond JetStream's duplicate
window: only events that enter the ledger for the first time are added to the totals.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date, timedelta
from decimal import Decimal
from typing import ClassVar, TypeVar

from events import UsageRecorded
from projections.base import Applied, Connection, Projection, physical
from projections.pgarray import array_literal

__all__ = ["MEASURES", "SCOPES", "SpendProjection"]

SCOPES = ("global", "user", "provider", "model", "project")
GLOBAL_KEY = "*"
# Summed columns, in the order of ``_measures``.
MEASURES = (
    ("cost", "numeric"),
    ("requests", "bigint"),
    ("unpriced_requests", "bigint"),
    ("input_uncached", "bigint"),
    ("input_cache_read", "bigint"),
    ("input_cache_write", "bigint"),
    ("output_text", "bigint"),
    ("output_reasoning", "bigint"),
    ("embedding_tokens", "bigint"),
    ("audio_seconds", "numeric"),
    ("images", "bigint"),
)

K = TypeVar("K")

# (user, project, provider, model, UTC day): the finest grain a batch is summed at.
_Cell = tuple[str | None, str | None, str, str, date]
_Key = tuple[str, str, str, date]


def _measures(event: UsageRecorded) -> list[Decimal | int]:
    u = event.usage
    return [
        event.cost or Decimal(0),
        1,
        1 if event.cost is None else 0,
        u.input_uncached,
        u.input_cache_read,
        u.input_cache_write,
        u.output_text,
        u.output_reasoning,
        u.embedding_tokens,
        u.audio_seconds,
        u.images.count if u.images else 0,
    ]


def _keys(cell: _Cell) -> Iterator[_Key]:
    """Every (scope, key, period, period start) a cell's spend counts towards."""
    user, project, provider, model, day = cell
    starts = (
        ("daily", day),
        ("weekly", day - timedelta(days=day.weekday())),
        ("monthly", day.replace(day=1)),
    )
    scopes = [("global", GLOBAL_KEY), ("provider", provider), ("model", model)]
    if user:
        scopes.append(("user", user))
    if project:
        scopes.append(("project", project))
    for scope, key in scopes:
        for period, start in starts:
            yield scope, key, period, start


class SpendProjection(Projection):
    name: ClassVar[str] = "spend"
    tables: ClassVar[tuple[str, ...]] = ("spend_totals", "spend_ledger")
    event_types = (UsageRecorded,)

    def ddl(self, version: int) -> list[str]:
        totals, ledger = (physical(t, version) for t in self.tables)
        measures = ",\n".join(f"{name} {sql_type} NOT NULL" for name, sql_type in MEASURES)
        return [
            f"""CREATE TABLE {totals} (
                scope text NOT NULL,
                scope_key text NOT NULL,
                period text NOT NULL,
                period_start date NOT NULL,
                {measures},
                PRIMARY KEY (scope, scope_key, period, period_start))""",
            f"""CREATE TABLE {ledger} (
                event_id uuid PRIMARY KEY,
                stream_seq bigint NOT NULL,
                occurred_at timestamptz NOT NULL,
                cost numeric)""",
        ]

    async def apply(self, conn: Connection, version: int, batch: Sequence[Applied]) -> None:
        events = [(a.stream_seq, a.event) for a in batch if isinstance(a.event, UsageRecorded)]
        if not events:
            return
        totals, ledger = (physical(t, version) for t in self.tables)
        cursor = await conn.execute(
            f"INSERT INTO {ledger} (event_id, stream_seq, occurred_at, cost)"
            " SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::timestamptz[], %s::numeric[])"
            " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            (
                array_literal(e.event_id for _, e in events),
                array_literal(seq for seq, _ in events),
                array_literal(e.occurred_at for _, e in events),
                array_literal(e.cost for _, e in events),
            ),
        )
        new_ids = {row[0] for row in await cursor.fetchall()}
        cells: dict[_Cell, list[Decimal | int]] = {}
        for _, event in events:
            if event.event_id not in new_ids:
                continue
            new_ids.discard(event.event_id)  # the same id twice in one batch counts once
            cell = (
                event.user_id,
                event.project_id,
                event.provider,
                event.model,
                event.occurred_at.date(),
            )  # occurred_at is UTC
            _add(cells, cell, _measures(event))
        groups: dict[_Key, list[Decimal | int]] = {}
        for cell, sums in cells.items():
            for key in _keys(cell):
                _add(groups, key, sums)
        if groups:
            await _upsert(conn, totals, groups)


def _add(table: dict[K, list[Decimal | int]], key: K, values: list[Decimal | int]) -> None:
    current = table.get(key)
    if current is None:
        table[key] = list(values)
    else:
        for i, value in enumerate(values):
            current[i] += value


async def _upsert(conn: Connection, table: str, groups: dict[_Key, list[Decimal | int]]) -> None:
    keys = list(groups)
    rows = list(groups.values())
    names = [name for name, _ in MEASURES]
    types = ["text", "text", "text", "date", *(t for _, t in MEASURES)]
    placeholders = ", ".join(f"%s::{t}[]" for t in types)
    updates = ", ".join(f"{c} = {table}.{c} + EXCLUDED.{c}" for c in names)
    await conn.execute(
        f"INSERT INTO {table} (scope, scope_key, period, period_start, {', '.join(names)})"
        f" SELECT * FROM unnest({placeholders})"
        f" ON CONFLICT (scope, scope_key, period, period_start) DO UPDATE SET {updates}",
        [
            *(array_literal(k[i] for k in keys) for i in range(4)),
            *(array_literal(r[i] for r in rows) for i in range(len(MEASURES))),
        ],
    )
