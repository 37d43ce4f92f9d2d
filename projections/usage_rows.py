"""A batch of usage events as rows in PostgreSQL, parsed once for every projection that
reads them.

The engine hands each validated event over as its canonical JSON; one ``jsonb``
parameter carries the whole batch and ``jsonb_to_recordset`` types it in C. Parsing costs
PostgreSQL more than anything the projections then do with a row (~16 µs per event for
the ``jsonb`` alone, measured), so the ledger stages each batch once in the session's
``usage_batch`` table and every projection of the transaction reads it from there.
"""

from __future__ import annotations

from collections.abc import Sequence

from events import UsageRecorded
from projections.engine.projection import Applied, Connection

__all__ = ["STAGED", "STAGED_COLUMNS", "STAGING_DDL", "USAGE_MEASURES", "stage", "staged_seqs"]

# Summed usage columns, with their SQL types.
USAGE_MEASURES = (
    ("input_uncached", "bigint"),
    ("input_cache_read", "bigint"),
    ("input_cache_write", "bigint"),
    ("output_text", "bigint"),
    ("output_reasoning", "bigint"),
    ("embedding_tokens", "bigint"),
    ("audio_seconds", "numeric"),
)

_EVENT_FIELDS = (
    ("event_id", "uuid"),
    ("occurred_at", "timestamptz"),
    ("provider", "text"),
    ("model", "text"),
    ("kind", "text"),
    ("user_id", "text"),
    ("project_id", "text"),
    ("cost", "numeric"),
    ("unpriced_reason", "text"),
    ("usage", "jsonb"),
    ("tags", "jsonb"),
    ("price", "jsonb"),
    ("reservation_id", "text"),
)

STAGED = "usage_batch"
"""The staged rows: a temporary table of the session, emptied at each commit."""

STAGED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("event_id", "uuid", "e.event_id"),
    ("stream_seq", "bigint", "s.stream_seq"),
    ("occurred_at", "timestamptz", "e.occurred_at"),
    ("provider", "text", "e.provider"),
    ("model", "text", "e.model"),
    ("kind", "text", "e.kind"),
    ("user_id", "text", "e.user_id"),
    ("project_id", "text", "e.project_id"),
    ("cost", "numeric", "e.cost"),
    ("unpriced_reason", "text", "e.unpriced_reason"),
    *((name, sql_type, f"u.{name}") for name, sql_type in USAGE_MEASURES),
    ("image_count", "integer", "(u.images ->> 'count')::integer"),
    ("image_size", "text", "u.images ->> 'size'"),
    ("image_quality", "text", "u.images ->> 'quality'"),
    ("tags", "jsonb", "e.tags"),
    ("price", "jsonb", "e.price"),
    ("reservation_id", "text", "e.reservation_id"),
)
"""(column, SQL type, expression over the parsed batch) of ``usage_batch``."""


def _typed(columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{name} {sql_type}" for name, sql_type in columns)


STAGING_DDL = (
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGED}"
    f" ({_typed([(name, sql_type) for name, sql_type, _ in STAGED_COLUMNS])})"
    " ON COMMIT DELETE ROWS"
)
_INSERT = (
    f"INSERT INTO {STAGED} ({', '.join(name for name, _, _ in STAGED_COLUMNS)})"
    f" SELECT {', '.join(expression for _, _, expression in STAGED_COLUMNS)}"
    f" FROM ROWS FROM (jsonb_to_recordset(%s::jsonb) AS ({_typed(_EVENT_FIELDS)}))"
    f" WITH ORDINALITY AS e({', '.join(name for name, _ in _EVENT_FIELDS)}, ord)"
    " JOIN unnest(%s::bigint[]) WITH ORDINALITY AS s(stream_seq, ord) USING (ord)"
    " CROSS JOIN LATERAL jsonb_to_record(e.usage)"
    f" AS u({_typed(USAGE_MEASURES)}, images jsonb)"
)


def _usage(batch: Sequence[Applied]) -> list[Applied]:
    return [a for a in batch if a.event_type is UsageRecorded]


def staged_seqs(batch: Sequence[Applied]) -> str | None:
    """The stream sequences of the batch's usage events as one array literal (a statement
    over ``usage_batch`` reads its own batch's rows: ``stream_seq = ANY(%s::bigint[])``),
    or None if it has none."""
    usage = _usage(batch)
    return "{" + ",".join(str(a.stream_seq) for a in usage) + "}" if usage else None


async def stage(conn: Connection, batch: Sequence[Applied]) -> bool:
    """Parse the batch's usage events into ``usage_batch`` (inside the caller's
    transaction); False if it has none."""
    usage = _usage(batch)
    if not usage:
        return False
    documents = "[" + ",".join(a.document for a in usage) + "]"
    await conn.execute(STAGING_DDL.encode())
    await conn.execute(_INSERT.encode(), (documents, staged_seqs(usage)))
    return True
