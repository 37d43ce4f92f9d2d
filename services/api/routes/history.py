"""Usage history: filtered keyset pages, and streamed CSV / JSON exports of the whole
filtered range (``projections.history_pages``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from events.envelope import UtcDatetime
from projections.history_pages import Cursor, HistoryFilter, export_csv, export_json_lines
from projections.history_pages import history_page as read_page
from services.api.auth import READ, require
from services.api.context import ApiServices, services
from services.api.problems import Problem

__all__ = ["HistoryPage", "history_filter", "router"]

router = APIRouter(prefix="/usage", tags=["usage history"], dependencies=[Depends(require(*READ))])
Api = Annotated[ApiServices, Depends(services)]
Name = Annotated[str | None, Query(max_length=200)]


class HistoryPage(BaseModel):
    rows: list[dict[str, Any]] = Field(description="newest first; cost null when unpriced")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


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
    tags = {}
    for item in tag or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise Problem(
                422,
                f"query.tag: {item!r} must look like KEY=VALUE",
                errors=[{"field": "query.tag", "message": "must look like KEY=VALUE"}],
            )
        tags[key] = value
    if since is not None and until is not None and since >= until:
        raise Problem(
            422,
            "query.until: must be after since",
            errors=[{"field": "query.until", "message": "must be after since"}],
        )
    return HistoryFilter(since, until, provider, model, user_id, project_id, tags)


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
    async with api.database.connection() as conn:
        rows, following = await read_page(conn, where, limit=limit, cursor=parse_cursor(cursor))
    return HistoryPage(rows=rows, next_cursor=following.encode() if following else None)


@router.get(
    "/export",
    summary="Every row of the filtered range, streamed (CSV, or JSON lines with format=json)",
    response_class=StreamingResponse,
)
async def export(
    api: Api, where: Filter, format: Literal["csv", "json"] = "csv"
) -> StreamingResponse:
    if format == "csv":
        body: AsyncIterator[bytes] = _stream(api, where, csv=True)
        media, suffix = "text/csv; charset=utf-8", "csv"
    else:
        body = _stream(api, where, csv=False)
        media, suffix = "application/x-ndjson", "jsonl"
    headers = {"Content-Disposition": f'attachment; filename="usage-history.{suffix}"'}
    return StreamingResponse(body, media_type=media, headers=headers)


async def _stream(api: ApiServices, where: HistoryFilter, *, csv: bool) -> AsyncIterator[bytes]:
    async with api.database.connection() as conn:
        try:
            if csv:
                async for chunk in export_csv(conn, where):
                    yield chunk
            else:
                async for lines in export_json_lines(conn, where):
                    yield ("\n".join(lines) + "\n").encode()
        except BaseException:
            # A client that went away mid-COPY leaves the connection mid-protocol: drop it
            # (the pool opens a fresh one) rather than hand it to the next request.
            await conn.close()
            raise
