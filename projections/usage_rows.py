"""A batch of usage events as a SQL row source, so projections aggregate and insert in
PostgreSQL rather than in Python.

The engine hands each validated event over as its canonical JSON; one ``jsonb`` parameter
carries the whole batch and ``jsonb_to_recordset`` types it in C. Python's share per event
is then decoding the NATS message and validating the event, nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence

from events import UsageRecorded
from projections.engine.projection import Applied

__all__ = ["SOURCE", "USAGE_MEASURES", "usage_rows"]

# Summed usage columns, with their SQL types: the shape of the ``u`` row below.
USAGE_MEASURES = (
    ("input_uncached", "bigint"),
    ("input_cache_read", "bigint"),
    ("input_cache_write", "bigint"),
    ("output_text", "bigint"),
    ("output_reasoning", "bigint"),
    ("embedding_tokens", "bigint"),
    ("audio_seconds", "numeric"),
)

_EVENT_COLUMNS = (
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


def _typed(columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{name} {sql_type}" for name, sql_type in columns)


SOURCE = (
    f"ROWS FROM (jsonb_to_recordset(%s::jsonb) AS ({_typed(_EVENT_COLUMNS)}))"
    f" WITH ORDINALITY AS e({', '.join(name for name, _ in _EVENT_COLUMNS)}, ord)"
    " JOIN unnest(%s::bigint[]) WITH ORDINALITY AS s(stream_seq, ord) USING (ord)"
    " CROSS JOIN LATERAL jsonb_to_record(e.usage)"
    f" AS u({_typed(USAGE_MEASURES)}, images jsonb)"
)


def usage_rows(batch: Sequence[Applied]) -> tuple[str, tuple[str, str]] | None:
    """``(FROM-clause, params)`` over the usage events of ``batch``, or None if there are
    none. Columns: e.* (event fields), s.stream_seq, u.* (usage classes, ``images``)."""
    usage = [a for a in batch if a.event_type is UsageRecorded]
    if not usage:
        return None
    documents = "[" + ",".join(a.document for a in usage) + "]"
    stream_seqs = "{" + ",".join(str(a.stream_seq) for a in usage) + "}"
    return SOURCE, (documents, stream_seqs)
