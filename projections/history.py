"""Usage history: one row per usage event, indexed for filtering by time, provider, model,
user and project (the seed's "Usage History" view and exports)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

from events import UsageRecorded
from projections.base import Applied, Connection, Projection, physical
from projections.pgarray import array_literal

__all__ = ["HistoryProjection"]

# (column, SQL type, value of an event)
_COLUMNS: list[tuple[str, str, Any]] = [
    ("event_id", "uuid", lambda s, e: e.event_id),
    ("stream_seq", "bigint", lambda s, e: s),
    ("occurred_at", "timestamptz", lambda s, e: e.occurred_at),
    ("provider", "text", lambda s, e: e.provider),
    ("model", "text", lambda s, e: e.model),
    ("kind", "text", lambda s, e: e.kind),
    ("user_id", "text", lambda s, e: e.user_id),
    ("project_id", "text", lambda s, e: e.project_id),
    ("cost", "numeric", lambda s, e: e.cost),
    ("unpriced_reason", "text", lambda s, e: e.unpriced_reason),
    ("input_uncached", "bigint", lambda s, e: e.usage.input_uncached),
    ("input_cache_read", "bigint", lambda s, e: e.usage.input_cache_read),
    ("input_cache_write", "bigint", lambda s, e: e.usage.input_cache_write),
    ("output_text", "bigint", lambda s, e: e.usage.output_text),
    ("output_reasoning", "bigint", lambda s, e: e.usage.output_reasoning),
    ("embedding_tokens", "bigint", lambda s, e: e.usage.embedding_tokens),
    ("audio_seconds", "numeric", lambda s, e: e.usage.audio_seconds),
    ("image_count", "integer", lambda s, e: e.usage.images.count if e.usage.images else None),
    ("image_size", "text", lambda s, e: e.usage.images.size if e.usage.images else None),
    ("image_quality", "text", lambda s, e: e.usage.images.quality if e.usage.images else None),
    ("tags", "jsonb", lambda s, e: json.dumps(e.tags) if e.tags else None),
    (
        "price",
        "jsonb",
        lambda s, e: e.price.model_dump_json() if e.price else None,
    ),
]
_FILTERED = ("provider", "model", "user_id", "project_id")


class HistoryProjection(Projection):
    name: ClassVar[str] = "history"
    tables: ClassVar[tuple[str, ...]] = ("usage_history",)
    event_types = (UsageRecorded,)

    def ddl(self, version: int) -> list[str]:
        table = physical("usage_history", version)
        columns = ",\n".join(
            f"{name} {sql_type}{' PRIMARY KEY' if name == 'event_id' else ''}"
            for name, sql_type, _ in _COLUMNS
        )
        return [
            f"CREATE TABLE {table} ({columns})",
            f"CREATE INDEX {table}_occurred_at ON {table} (occurred_at)",
            *(
                f"CREATE INDEX {table}_{column} ON {table} ({column}, occurred_at)"
                for column in _FILTERED
            ),
        ]

    async def apply(self, conn: Connection, version: int, batch: Sequence[Applied]) -> None:
        rows = [a for a in batch if isinstance(a.event, UsageRecorded)]
        if not rows:
            return
        table = physical("usage_history", version)
        names = ", ".join(name for name, _, _ in _COLUMNS)
        arrays = ", ".join(
            f"%s::{'text' if sql_type == 'jsonb' else sql_type}[]" for _, sql_type, _ in _COLUMNS
        )
        casts = ", ".join(
            f"{name}::jsonb" if sql_type == "jsonb" else name for name, sql_type, _ in _COLUMNS
        )
        await conn.execute(
            f"INSERT INTO {table} ({names}) SELECT {casts} FROM unnest({arrays}) AS u({names})"
            " ON CONFLICT (event_id) DO NOTHING",
            [array_literal(value(a.stream_seq, a.event) for a in rows) for _, _, value in _COLUMNS],
        )
