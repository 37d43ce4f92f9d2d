"""Browsing and exporting the usage history: filters, keyset pages and streamed exports.

Pages are newest first and keyed by ``(occurred_at, event_id)``, never by OFFSET, so a
page costs the same at any depth. A browse is pinned to the history's position when it
started (``as_of``, a stream sequence): events applied later never shift, repeat or join
its pages, and an export of the same filters pinned at the same ``as_of`` lists exactly
the rows the pages showed.
Rows are rendered by PostgreSQL once, in one shape, for pages, CSV and JSON alike.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from budget.policies import canonical_key
from events import BudgetScope
from projections.cursors import decode_cursor, encode_cursor
from projections.engine.projection import Connection
from projections.readable import readable_position

__all__ = [
    "HISTORY_FIELDS",
    "Cursor",
    "HistoryFilter",
    "export_csv",
    "export_json_lines",
    "history_page",
    "tag_filters",
]

_TIME = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
# (name, SQL rendering): the columns of a history row, in order.
_FIELDS: tuple[tuple[str, str], ...] = (
    ("event_id", "event_id::text"),
    ("occurred_at", _TIME.format("occurred_at")),
    ("provider", "provider"),
    ("model", "model"),
    ("kind", "kind"),
    ("user_id", "user_id"),
    ("project_id", "project_id"),
    ("cost", "cost::text"),
    ("unpriced_reason", "unpriced_reason"),
    ("input_uncached", "input_uncached"),
    ("input_cache_read", "input_cache_read"),
    ("input_cache_write", "input_cache_write"),
    ("output_text", "output_text"),
    ("output_reasoning", "output_reasoning"),
    ("embedding_tokens", "embedding_tokens"),
    ("audio_seconds", "audio_seconds::text"),
    ("image_count", "image_count"),
    ("image_size", "image_size"),
    ("image_quality", "image_quality"),
    ("tags", "tags::text"),
    ("publisher", "publisher"),
)
HISTORY_FIELDS = tuple(name for name, _ in _FIELDS)
# Qualified: a bare ``occurred_at`` or ``event_id`` in ORDER BY names the output column of
# that name, the text rendering above, and PostgreSQL then sorts every matching row by it
# (seconds over millions) instead of reading the occurred_at index backwards.
_NEWEST_FIRST = "ORDER BY usage_history.occurred_at DESC, usage_history.event_id DESC"
_EXPORT_BLOCK = 1 << 16  # bytes of CSV per chunk of an export
_SELECT = ", ".join(f"{sql} AS {name}" for name, sql in _FIELDS)
# Free text that a spreadsheet would run as a formula gets a leading ' in CSV exports
# (budget.report_format.FORMULA_STARTS); JSON keeps every value as stored.
_FREE_TEXT = (
    "provider",
    "model",
    "user_id",
    "project_id",
    "unpriced_reason",
    "image_size",
    "image_quality",
    "publisher",
)
_FORMULA = (
    "CASE WHEN left({0}, 1) IN ('=', '+', '-', '@', chr(9), chr(13)) THEN '''' || {0} ELSE {0} END"
)
_CSV_SELECT = ", ".join(
    f"{_FORMULA.format(sql) if name in _FREE_TEXT else sql} AS {name}" for name, sql in _FIELDS
)
# JSON rows carry tags as an object; CSV cells as its JSON text.
_JSON_ROW = "json_build_object({})::text".format(
    ", ".join(f"'{name}', {'tags' if name == 'tags' else sql}" for name, sql in _FIELDS)
)


# (filter, the scope whose key it is, the history column it matches)
_FILTERS = (
    ("provider", BudgetScope.PROVIDER, "provider_key"),
    ("model", BudgetScope.MODEL, "model_key"),
    ("user_id", BudgetScope.USER, "user_id"),
    ("project_id", BudgetScope.PROJECT, "project_id"),
)


def tag_filters(items: Iterable[str]) -> dict[str, str]:
    """The tags ``KEY=VALUE`` items ask a call to carry (``ValueError`` saying which item
    is wrong: one without ``=`` or a key, or a key given two values)."""
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{item!r} must look like KEY=VALUE")
        if tags.get(key, value) != value:  # the later would silently replace the earlier
            raise ValueError(f"{key!r} is given twice; a call carries one value of a tag")
        tags[key] = value
    return tags


@dataclass(frozen=True)
class HistoryFilter:
    """Calls with ``since <= occurred_at < until`` matching every given filter; tags match
    when the call carries each given tag with that value. A provider and a model are
    matched by their keys, as spend is counted (``canonical_key``: the rows'
    ``provider_key`` and ``model_key``): "OpenAI" finds the calls recorded as "openai" and
    "OPENAI", "GPT-4o" those recorded as "gpt-4o" and "GPT-4O"."""

    since: datetime | None = None
    until: datetime | None = None
    provider: str | None = None
    model: str | None = None
    user_id: str | None = None
    project_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, scope, _ in _FILTERS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, canonical_key(scope, value))

    def key_clauses(self) -> tuple[list[str], dict[str, Any]]:
        """The conditions on ``usage_history`` of the provider, model, user, project and
        tags given, and their parameters (named as the filters; the tags as JSON)."""
        params = {name: getattr(self, name) for name, _, _ in _FILTERS}
        given = {name: value for name, value in params.items() if value is not None}
        columns = {name: column for name, _, column in _FILTERS}
        clauses = [f"{columns[name]} = %({name})s" for name in given]
        if self.tags:
            clauses.append("tags @> %(tags)s::jsonb")
            given["tags"] = json.dumps(dict(self.tags))
        return clauses, given

    def where(self, as_of: int) -> tuple[str, dict[str, Any]]:
        keys, params = self.key_clauses()
        params["as_of"] = as_of
        clauses = ["stream_seq <= %(as_of)s", *keys]
        if self.since is not None:
            clauses.append("occurred_at >= %(since)s")
            params["since"] = self.since
        if self.until is not None:
            clauses.append("occurred_at < %(until)s")
            params["until"] = self.until
        return " AND ".join(clauses), params


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: after the row ``(occurred_at, event_id)``, in the
    browse pinned at ``as_of``. Opaque to clients (URL-safe base64 of JSON)."""

    as_of: int
    occurred_at: datetime | None = None
    event_id: uuid.UUID | None = None

    def encode(self) -> str:
        data = {
            "s": self.as_of,
            "t": self.occurred_at.isoformat() if self.occurred_at else None,
            "e": str(self.event_id) if self.event_id else None,
        }
        return encode_cursor(data)

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """``ValueError`` when ``text`` is not a cursor this service issued."""
        foreign = ValueError("cursor is not one this service issued; start from page one")
        try:
            data = decode_cursor(text)
            as_of, at, event_id = data["s"], data["t"], data["e"]
        except (ValueError, KeyError, TypeError):
            raise foreign from None
        # Exactly the types ``encode`` writes (a bool is an int to isinstance).
        if type(as_of) is not int or as_of < 0 or (at is None) != (event_id is None):
            raise foreign
        if at is None:
            return cls(as_of)
        if not isinstance(at, str) or not isinstance(event_id, str):
            raise foreign
        try:
            return cls(as_of, datetime.fromisoformat(at), uuid.UUID(event_id))
        except ValueError:
            raise foreign from None


async def _start(conn: Connection, cursor: Cursor | None) -> Cursor:
    """Where a browse starts; ``Rebuilding`` while the history's tables are another
    release's (after an upgrade, until its rebuild goes live), on any of its pages."""
    position = await readable_position(conn, "history")
    return cursor if cursor is not None else Cursor(position)


async def history_page(
    conn: Connection, where: HistoryFilter, *, limit: int, cursor: Cursor | None = None
) -> tuple[list[dict[str, Any]], Cursor | None]:
    """Up to ``limit`` rows after ``cursor`` (newest first), and the cursor of the next
    page (None on the last)."""
    at = await _start(conn, cursor)
    clause, params = where.where(at.as_of)
    if at.occurred_at is not None:
        # Written so the (…, occurred_at) indexes bound the scan: O(limit) at any depth.
        clause += (
            " AND occurred_at <= %(after_t)s"
            " AND (occurred_at < %(after_t)s OR event_id < %(after_e)s)"
        )
        params.update(after_t=at.occurred_at, after_e=at.event_id)
    params["limit"] = limit + 1
    result = await conn.execute(
        f"SELECT {_SELECT}, occurred_at AS _t, event_id AS _e FROM usage_history"
        f" WHERE {clause} {_NEWEST_FIRST} LIMIT %(limit)s".encode(),
        params,
    )
    fetched = await result.fetchall()
    rows = [_record(row[:-2]) for row in fetched[:limit]]
    if len(fetched) <= limit:
        return rows, None
    last = fetched[limit - 1]
    return rows, Cursor(at.as_of, last[-2], last[-1])


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    record = dict(zip(HISTORY_FIELDS, row, strict=True))
    record["tags"] = json.loads(record["tags"])
    return record


async def export_csv(
    conn: Connection, where: HistoryFilter, as_of: int | None = None
) -> AsyncIterator[bytes]:
    """Every matching row as CSV with a header, newest first, produced by PostgreSQL's COPY
    in chunks of ~64 KiB (memory stays flat however many rows match)."""
    position = await readable_position(conn, "history")
    pinned = as_of if as_of is not None else position
    clause, params = where.where(pinned)
    query = (
        f"COPY (SELECT {_CSV_SELECT} FROM usage_history WHERE {clause} {_NEWEST_FIRST})"
        " TO STDOUT WITH (FORMAT csv, HEADER true)"
    )
    async with conn.cursor() as cur, cur.copy(query.encode(), params) as copy:
        # COPY hands over one row at a time: gather them into blocks, so the response is
        # written (and the client reads) a block per _EXPORT_BLOCK bytes, not per row.
        block = bytearray()
        async for row in copy:
            block += row
            if len(block) >= _EXPORT_BLOCK:
                yield bytes(block)
                block.clear()
        if block:
            yield bytes(block)


async def export_json_lines(
    conn: Connection, where: HistoryFilter, as_of: int | None = None, *, batch: int = 5000
) -> AsyncIterator[list[str]]:
    """Every matching row as one JSON object per item, newest first, read with a
    server-side cursor ``batch`` rows at a time."""
    position = await readable_position(conn, "history")
    pinned = as_of if as_of is not None else position
    clause, params = where.where(pinned)
    query = f"SELECT {_JSON_ROW} FROM usage_history WHERE {clause} {_NEWEST_FIRST}"
    async with conn.transaction(), conn.cursor(name="history_export") as cur:
        await cur.execute(query.encode(), params)
        while rows := await cur.fetchmany(batch):
            yield [row[0] for row in rows]
