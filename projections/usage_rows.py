"""A batch of usage events as rows in PostgreSQL, staged once for every projection that
reads them.

The ledger stages each batch in the session's temporary ``usage_batch`` table with one
binary COPY of the decoded values, and every projection of the transaction reads its rows
there. Measured per event on 2,000-event batches: PostgreSQL spends 2.0 µs on a binary
COPY row against 10.5 µs parsing the same event from one ``jsonb`` parameter (which a
group of three projections and the ledger used to parse four times); building and sending
the row costs the consumer ~4-6 µs, where PostgreSQL, one backend per consumer, is the
tighter limit.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from budget.policies import canonical_key
from events import BudgetScope, UsageRecorded
from projections.engine.projection import Applied, Connection

__all__ = [
    "COUNTED",
    "KEYS",
    "STAGED",
    "STAGED_COLUMNS",
    "STAGING_DDL",
    "USAGE_MEASURES",
    "Staged",
    "create_staging",
    "stage",
    "staged_rows",
]

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

STAGED = "usage_batch"
"""The staged rows: a temporary table of the session, emptied at each commit."""

STAGED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "uuid"),
    ("stream_seq", "bigint"),
    ("occurred_at", "timestamptz"),
    ("provider_key", "text"),
    ("model_key", "text"),
    ("kind", "text"),
    ("user_id", "text"),
    ("project_id", "text"),
    ("cost", "numeric"),
    ("reservation_id", "text"),
    ("unpriced_reason", "text"),
    ("provider", "text"),
    ("model", "text"),
    *USAGE_MEASURES,
    ("image_count", "integer"),
    ("image_size", "text"),
    ("image_quality", "text"),
    ("tags", "jsonb"),
    ("price", "jsonb"),
    ("publisher", "text"),
)
"""(column, SQL type) of ``usage_batch``. ``provider`` and ``model`` are the event's, as
its producer spelt them; ``provider_key`` and ``model_key`` are their keys
(``budget.policies.canonical_key``: "OpenAI" is "openai", "GPT-4o" is "gpt-4o",
"models/gemini-2.0-flash" is "gemini-2.0-flash"), which
every count and filter by provider or model uses, as provider and model policies match
them. Computed here, by the consumers, so usage counts under one key whichever producer
published it (the Node.js example, any NATS client, not only the Python tracker)."""
KEYS = (
    "model_key: canonical_model (stripped, lower-cased, less Google's resource path);"
    " provider_key: canonical_provider (the price data's provider id)"
)
"""How staged rows key what the events do not say: a release that keys otherwise changes
this, and every projection that counts from the staged rows or the ledger is rebuilt
from the log (``engine.shapes``)."""
COUNTED = 10
"""The first columns: what counting spend needs (a ledger, cost totals); ``stage`` with
``counted_only`` leaves the others NULL."""


def _typed(columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{name} {sql_type}" for name, sql_type in columns)


_TYPES = [sql_type for _, sql_type in STAGED_COLUMNS]


def _copy(columns: int) -> str:
    names = ", ".join(name for name, _ in STAGED_COLUMNS[:columns])
    return f"COPY {STAGED} ({names}) FROM STDIN (FORMAT BINARY)"


_COPIES = {columns: _copy(columns) for columns in (COUNTED, len(STAGED_COLUMNS))}

STAGING_DDL = (
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGED} ({_typed(STAGED_COLUMNS)}) ON COMMIT DELETE ROWS"
)


_STAGING_CREATED: weakref.WeakSet[Connection] = weakref.WeakSet()
"""Connections whose session holds ``usage_batch`` for good (``create_staging``)."""


async def create_staging(conn: Connection) -> None:
    """Create the session's ``usage_batch`` outside any transaction (one created inside a
    transaction that rolls back is gone with it), so ``stage`` need not ask for it before
    each batch: a round trip, and a notice, per batch."""
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise RuntimeError("create_staging runs outside a transaction")
    await conn.execute(STAGING_DDL.encode())
    _STAGING_CREATED.add(conn)


def _usage(batch: Sequence[Applied]) -> list[Applied]:
    return [a for a in batch if a.event_type is UsageRecorded]


@dataclass(frozen=True, slots=True)
class Staged:
    """Which rows of ``usage_batch`` a statement reads: a batch's usage events, given to
    ``staged_rows`` as the statement's named parameters (``params``)."""

    seqs: str
    """Their stream sequences, as one array literal."""
    first: int
    last: int
    count: int

    @classmethod
    def of(cls, batch: Sequence[Applied]) -> Staged | None:
        """The batch's usage events, or None if it has none."""
        seqs = [a.stream_seq for a in _usage(batch)]
        if not seqs:
            return None
        return cls("{" + ",".join(map(str, seqs)) + "}", min(seqs), max(seqs), len(seqs))

    @property
    def params(self) -> dict[str, object]:
        return {"seqs": self.seqs, "first": self.first, "last": self.last, "count": self.count}


def staged_rows(alias: str = "") -> str:
    """SQL condition: the row of ``usage_batch`` (``alias``, if it has one) is one of
    ``Staged.params``'s events.

    The batch's usage events are staged (the ledger stages each batch), and usually they
    are every staged row in their range of sequences, which a range test finds in one
    pass; only when they are not (a batch applied again without an event a projection
    refused) is each row looked up in the array. That lookup is linear per row in a
    generic plan (PostgreSQL hashes only constant arrays): for 2,000-event batches, 2,000
    comparisons a row, ~16 % of PostgreSQL's CPU in a catch-up when it was the only way
    (docs/performance.md)."""
    seq = f"{alias}.stream_seq" if alias else "stream_seq"
    in_range = "BETWEEN %(first)s::bigint AND %(last)s::bigint"
    whole = f"(SELECT count(*) FROM {STAGED} WHERE stream_seq {in_range}) = %(count)s::bigint"
    return f"{seq} {in_range} AND ({whole} OR {seq} = ANY(%(seqs)s::bigint[]))"


async def stage(
    conn: Connection, batch: Sequence[Applied], *, counted_only: bool = False
) -> Staged | None:
    """Copy the batch's usage events into ``usage_batch`` (inside the caller's
    transaction), only their ``COUNTED`` columns if ``counted_only`` (the alert evaluator
    needs no more, and the rest, JSON above all, is most of the copy's cost). Which rows
    it staged, or None if the batch has no usage."""
    usage = _usage(batch)
    if not usage:
        return None
    columns, row = (COUNTED, _counted_row) if counted_only else (len(STAGED_COLUMNS), _row)
    if conn not in _STAGING_CREATED:
        await conn.execute(STAGING_DDL.encode())
    async with conn.cursor().copy(_COPIES[columns]) as copy:
        copy.set_types(_TYPES[:columns])
        for applied in usage:
            await copy.write_row(row(applied))
    return Staged.of(usage)


def _counted_row(applied: Applied) -> tuple[object, ...]:
    """The ``COUNTED`` columns of a usage event's ``usage_batch`` row."""
    event = applied.recorded
    return (
        event.event_id,
        applied.stream_seq,
        event.occurred_at,
        canonical_key(BudgetScope.PROVIDER, event.provider),
        canonical_key(BudgetScope.MODEL, event.model),
        event.kind,
        event.user_id,
        event.project_id,
        event.cost,
        event.reservation_id,
    )


def _row(applied: Applied) -> tuple[object, ...]:
    """The ``usage_batch`` row of a usage event, in ``STAGED_COLUMNS`` order."""
    event = applied.recorded
    usage, images, price = event.usage, event.usage.images, event.price
    return (
        *_counted_row(applied),
        event.unpriced_reason,
        event.provider,
        event.model,
        usage.input_uncached,
        usage.input_cache_read,
        usage.input_cache_write,
        usage.output_text,
        usage.output_reasoning,
        usage.embedding_tokens,
        usage.audio_seconds,
        None if images is None else images.count,
        None if images is None else images.size,
        None if images is None else images.quality,
        Jsonb(event.tags, dumps=_json),
        None if price is None else Jsonb(price, dumps=_json),
        applied.publisher,
    )


_encode = msgspec.json.Encoder().encode


def _json(value: object) -> bytes | str:
    """Canonical JSON (None values left out) of a fast struct, a model, or a dict."""
    if isinstance(value, BaseModel):
        return value.model_dump_json(exclude_none=True)
    return _encode(value)
