"""Usage history: filtered keyset pages, and streamed CSV / JSON exports of the whole
filtered range (``projections.history_pages``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from events.envelope import UtcDatetime
from events.limits import NAME_MAX
from projections.db import connect
from projections.engine.projection import Connection
from projections.history_pages import (
    Cursor,
    HistoryFilter,
    export_csv,
    export_json_lines,
    tag_filters,
)
from projections.history_pages import history_page as read_page
from projections.readable import readable_position
from services.api.auth import Principal
from services.api.context import ApiServices, current_services
from services.api.exact_json import ExactJsonRoute
from services.api.limits import limited_read
from services.api.open_streams import OpenStreams
from services.api.problems import LIMITED_RESPONSES, Problem

__all__ = ["HistoryPage", "browse", "history_filter", "router"]

router = APIRouter(
    route_class=ExactJsonRoute,
    prefix="/usage",
    tags=["usage history"],
    dependencies=[Depends(limited_read)],
    responses=LIMITED_RESPONSES,
)
Api = Annotated[ApiServices, Depends(current_services)]
# An empty filter matches no call: refused, rather than answered with no rows.
Name = Annotated[str | None, Query(min_length=1, max_length=NAME_MAX)]


class HistoryPage(BaseModel):
    rows: list[dict[str, Any]] = Field(
        description="newest first; cost null when unpriced; publisher: the NATS user that"
        " published the event, api-key-<id> for one posted by that key, null when unknown"
    )
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")
    as_of: int = Field(
        description="the history position this browse is pinned to: pass it to the export"
        " (`as_of`) for exactly the rows of these pages"
    )


def history_filter(
    since: Annotated[UtcDatetime | None, Query(description="occurred_at >= since")] = None,
    until: Annotated[UtcDatetime | None, Query(description="occurred_at < until")] = None,
    provider: Name = None,
    model: Name = None,
    user_id: Name = None,
    project_id: Name = None,
    tag: Annotated[
        list[str] | None, Query(description="KEY=VALUE; repeat for several", max_length=20)
    ] = None,
) -> HistoryFilter:
    try:
        tags = tag_filters(tag or [])
    except ValueError as exc:
        raise _tag_problem(str(exc)) from None
    if since is not None and until is not None and since >= until:
        raise Problem(
            422,
            "query.until: must be after since",
            errors=[{"field": "query.until", "message": "must be after since"}],
        )
    return HistoryFilter(since, until, provider, model, user_id, project_id, tags)


def _tag_problem(message: str) -> Problem:
    return Problem(
        422, f"query.tag: {message}", errors=[{"field": "query.tag", "message": message}]
    )


Filter = Annotated[HistoryFilter, Depends(history_filter)]


def parse_cursor(text: str | None) -> Cursor | None:
    if text is None:
        return None
    try:
        return Cursor.decode(text)
    except ValueError as exc:
        raise Problem(
            422, f"query.cursor: {exc}", errors=[{"field": "query.cursor", "message": str(exc)}]
        ) from None


@router.get("", summary="A page of usage history, newest first (keyset pagination)")
async def history_page(
    api: Api,
    where: Filter,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> HistoryPage:
    rows, following, as_of = await api.database.read(
        lambda conn: browse(conn, where, limit=limit, cursor=parse_cursor(cursor))
    )
    return HistoryPage(
        rows=rows, next_cursor=following.encode() if following else None, as_of=as_of
    )


async def browse(
    conn: Connection, where: HistoryFilter, *, limit: int, cursor: Cursor | None
) -> tuple[list[dict[str, Any]], Cursor | None, int]:
    """A page (``history_pages.history_page``), its next cursor, and the position its
    browse is pinned to, which the first page takes (every later one carries it)."""
    start = cursor if cursor is not None else Cursor(await readable_position(conn, "history"))
    rows, following = await read_page(conn, where, limit=limit, cursor=start)
    return rows, following, start.as_of


@router.get(
    "/export",
    summary="Every row of the filtered range, streamed (CSV, or JSON lines with format=json)",
    response_class=StreamingResponse,
)
async def export(
    api: Api,
    where: Filter,
    reader: Annotated[Principal, Depends(limited_read)],
    format: Literal["csv", "json"] = "csv",
    as_of: Annotated[
        int | None,
        Query(
            ge=0,
            description="a browse's `as_of` (GET /usage): export exactly its rows, none"
            " applied since; default: the history's position as the export starts",
        ),
    ] = None,
) -> StreamingResponse:
    if _running.count(reader.key_id) >= MAX_EXPORTS_PER_KEY:
        running = f"{MAX_EXPORTS_PER_KEY} exports of this API key are running"
    elif _running.count() >= MAX_EXPORTS:
        running = f"{MAX_EXPORTS} exports are running"
    else:
        running = ""
    if running:
        raise Problem(429, f"{running}; retry when one has finished", headers={"Retry-After": "5"})
    # Taken before anything is awaited, so exports asked at once cannot pass the caps; the
    # stream keeps it (its argument), an error here lets it go.
    slot = _Slot()
    _running.hold(slot)
    _running.hold(slot, reader.key_id)
    # Before the answer starts: a database that is away, or a history being rebuilt after
    # an upgrade, is a 503 here, not a cut stream.
    live = await api.database.read(lambda conn: readable_position(conn, "history"))
    pinned = live if as_of is None else min(as_of, live)  # never rows not yet applied
    csv = format == "csv"
    body = _stream(api.settings.database_url, where, pinned, csv=csv, slot=slot)
    media = "text/csv; charset=utf-8" if csv else "application/x-ndjson"
    name = "usage-history.csv" if csv else "usage-history.jsonl"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return StreamingResponse(body, media_type=media, headers=headers)


MAX_EXPORTS = 4
"""Exports running at once; each holds a connection of its own for as long as it streams."""
MAX_EXPORTS_PER_KEY = 2
"""Of them, one key's: one reader cannot take every slot."""


_running = OpenStreams()


class _Slot:
    """One export's place among those running, held by its stream while it exists."""


async def _stream(
    database_url: str, where: HistoryFilter, as_of: int, *, csv: bool, slot: _Slot
) -> AsyncIterator[bytes]:
    # Its own connection, not the pool's: a long export never holds up short requests,
    # and one a client abandons mid-COPY is simply closed.
    async with await connect(database_url) as conn:
        if csv:
            async for chunk in export_csv(conn, where, as_of):
                yield chunk
        else:
            async for lines in export_json_lines(conn, where, as_of):
                yield ("\n".join(lines) + "\n").encode()
