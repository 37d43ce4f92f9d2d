"""Alerts: list with filters, one with its deliveries, acknowledge, resolve, and a live
feed of new alerts as Server-Sent Events (the UI channel's ``alert_feed``)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from functools import partial
from typing import Annotated, Any, LiteralString

import psycopg
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from events import AlertSeverity, AlertType
from events.limits import NAME_MAX
from events.queries import AlertDelivery, AlertsQuery, StoredAlert
from projections.cursors import decode_cursor, encode_cursor
from projections.engine.projection import Connection
from projections.queries import AlertPosition, alerts_page
from services.api.auth import ADMIN, READ, Principal, authenticate, require
from services.api.context import ApiServices, current_services
from services.api.exact_json import ExactJsonRoute
from services.api.limits import holding, limited_read
from services.api.open_streams import OpenStreams
from services.api.problems import LIMITED_RESPONSES, Problem

__all__ = ["Acknowledgement", "AlertDetail", "alert_cursor", "alert_position", "router"]

router = APIRouter(route_class=ExactJsonRoute, prefix="/alerts", tags=["alerts"])
Api = Annotated[ApiServices, Depends(current_services)]
Admin = Annotated[Principal, Depends(require(*ADMIN))]
_feeds = OpenStreams()
"""Live feeds open per key: each polls the database while open."""
_reader = require(*READ)
_POLL = 0.25  # seconds between looks at the feed
_LOOK_BACK = timedelta(seconds=5)  # rows commit out of order within this
_KEEP_ALIVE = 15.0
_RECHECK = 1.0  # seconds between looks at whether the feed's key or session still lives


class AlertDetail(BaseModel):
    alert: StoredAlert
    deliveries: list[AlertDelivery]


class Acknowledgement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str | None = Field(default=None, max_length=NAME_MAX, description="default: the key's name")


class AlertsPage(BaseModel):
    alerts: list[StoredAlert] = Field(description="newest first")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


@router.get(
    "",
    dependencies=[Depends(limited_read)],
    responses=LIMITED_RESPONSES,
    summary="Alerts, newest first (keyset pages)",
)
async def list_alerts(
    api: Api,
    policy_id: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    severity: AlertSeverity | None = None,
    alert_type: AlertType | None = None,
    unacknowledged_only: bool = False,
    acknowledged_only: bool = False,
    resolved: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=NAME_MAX)] = None,
) -> AlertsPage:
    if unacknowledged_only and acknowledged_only:  # no alert is both: say so, not []
        message = "cannot be true with unacknowledged_only: no alert is both"
        raise Problem(
            422,
            f"query.acknowledged_only: {message}",
            errors=[{"field": "query.acknowledged_only", "message": message}],
        )
    query = AlertsQuery(
        policy_id=policy_id,
        severity=severity,
        alert_type=alert_type,
        unacknowledged_only=unacknowledged_only,
        acknowledged_only=acknowledged_only,
        resolved=resolved,
        limit=limit,
    )
    alerts, following = await api.database.read(
        lambda conn: alerts_page(conn, query, alert_position(cursor))
    )
    return AlertsPage(alerts=alerts, next_cursor=alert_cursor(following) if following else None)


def alert_cursor(position: AlertPosition) -> str:
    """The cursor of the page of alerts after ``position``."""
    raised_at, seq, alert_id = position
    return encode_cursor([raised_at.isoformat(), seq, str(alert_id)])


def alert_position(cursor: str | None) -> AlertPosition | None:
    """Where ``cursor`` says a page starts; ``Problem(422)`` when it is not one of ours."""
    if cursor is None:
        return None
    try:
        raised_at, seq, alert_id = decode_cursor(cursor)
        # Exactly the types ``alert_cursor`` writes (a bool is an int to isinstance).
        if not (isinstance(raised_at, str) and type(seq) is int and isinstance(alert_id, str)):
            raise ValueError
        return datetime.fromisoformat(raised_at), seq, uuid.UUID(alert_id)
    except (ValueError, TypeError):
        message = "not a cursor this service issued; start from page one"
        raise Problem(
            422, f"query.cursor: {message}", errors=[{"field": "query.cursor", "message": message}]
        ) from None


async def _room_for_a_feed(request: Request, api: Api) -> Principal:
    """The reader, if its key has fewer live feeds open than allowed (else 429, before its
    read rate is spent); a feed spends one read as it opens and no slot in flight while
    it streams (every console tab keeps one open, all day)."""
    reader = await _reader(request)
    most = api.settings.api_feeds_per_key
    if _feeds.count(reader.key_id) >= most:
        raise Problem(
            429,
            f"this API key has {most} live feeds open, the most allowed (api_feeds_per_key):"
            " close one (a console tab) and retry",
            retry_after=5,
        )
    with holding(request.app.state.key_limits.reads, reader):
        return reader


@router.get(
    "/stream",
    responses=LIMITED_RESPONSES,
    summary="New alerts as Server-Sent Events (event: alert, id: its id, data: the alert);"
    " a reconnect with Last-Event-ID resumes after that alert",
    response_class=StreamingResponse,
)
async def stream(
    request: Request, api: Api, reader: Annotated[Principal, Depends(_room_for_a_feed)]
) -> StreamingResponse:
    feed = _feed(request, api, reader)
    _feeds.hold(feed, reader.key_id)
    return StreamingResponse(
        feed,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/{alert_id}",
    dependencies=[Depends(limited_read)],
    responses=LIMITED_RESPONSES,
    summary="One alert",
)
async def get_alert(api: Api, alert_id: uuid.UUID) -> AlertDetail:
    found = await api.database.alerts(AlertsQuery(alert_id=alert_id))
    if not found:
        raise Problem(404, f"there is no alert {alert_id}")
    return AlertDetail(alert=found[0], deliveries=await api.database.deliveries(alert_id))


@router.post("/{alert_id}/acknowledge", status_code=204, summary="Acknowledge an alert")
async def acknowledge(
    api: Api, who: Admin, alert_id: uuid.UUID, body: Acknowledgement | None = None
) -> Response:
    await _existing(api, alert_id)
    by = body.by if body is not None and body.by else who.name
    await api.alerts.acknowledge_alert(alert_id, by)
    return Response(status_code=204)


@router.post("/{alert_id}/resolve", status_code=204, summary="Resolve an alert")
async def resolve(api: Api, who: Admin, alert_id: uuid.UUID) -> Response:
    await _existing(api, alert_id)
    await api.alerts.resolve_alert(alert_id, who.name)
    return Response(status_code=204)


async def _existing(api: ApiServices, alert_id: uuid.UUID) -> None:
    if not await api.database.alerts(AlertsQuery(alert_id=alert_id)):
        raise Problem(404, f"there is no alert {alert_id}")


async def _feed(request: Request, api: ApiServices, reader: Principal) -> AsyncIterator[bytes]:
    """Alerts the UI channel delivers after the connection (or, on a reconnect, after the
    alert named by ``Last-Event-ID``); a comment every 15 s keeps proxies from closing an
    idle stream. It ends within ``_RECHECK`` seconds of its key's revocation or its
    session's end (a reconnect is then refused)."""
    since = await api.database.read(
        lambda conn: _resume_point(conn, request.headers.get("last-event-id"))
    )
    # What was delivered up to the start is the client's already (or before its time).
    delivered = partial(_rows, query=_DELIVERED, params=(since - _LOOK_BACK, since))
    sent: dict[uuid.UUID, datetime] = dict(await api.database.read(delivered))
    idle = unchecked = 0.0
    yield b": connected\n\n"
    while not await request.is_disconnected():
        if unchecked >= _RECHECK:
            unchecked = 0.0
            if not await _still_reading(request, reader):
                return
        unchecked += _POLL
        try:
            polled = await api.database.read(
                partial(_rows, query=_DELIVERED_SINCE, params=(since - _LOOK_BACK,))
            )
        except psycopg.OperationalError:
            # PostgreSQL is away (a restart): the feed stays open and looks again at the
            # next poll; nothing delivered meanwhile is missed (``since`` did not move).
            polled = []
        fresh = [r for r in polled if r[0] not in sent]
        for alert_id, payload, delivered_at in fresh:
            sent[alert_id] = delivered_at
            since = max(since, delivered_at)
            yield f"id: {alert_id}\nevent: alert\ndata: {json.dumps(payload)}\n\n".encode()
        horizon = since - 2 * _LOOK_BACK
        for old in [k for k, at in sent.items() if at < horizon]:
            del sent[old]
        idle = 0.0 if fresh else idle + _POLL
        if idle >= _KEEP_ALIVE:
            idle = 0.0
            yield b": keep-alive\n\n"
        await asyncio.sleep(_POLL)


async def _still_reading(request: Request, reader: Principal) -> bool:
    """Whether the key (or session) that opened the feed still identifies its reader."""
    try:
        now = await authenticate(request)
    except psycopg.OperationalError:
        return True  # PostgreSQL away: looked at again at the next check
    return now is not None and now.key_id == reader.key_id


_DELIVERED: LiteralString = (
    "SELECT alert_id, delivered_at FROM alert_feed WHERE delivered_at >= %s AND delivered_at <= %s"
)
_DELIVERED_SINCE: LiteralString = (
    "SELECT alert_id, payload, delivered_at FROM alert_feed"
    " WHERE delivered_at >= %s ORDER BY delivered_at, alert_id"
)


async def _rows(
    conn: Connection, query: LiteralString, params: tuple[object, ...]
) -> list[tuple[Any, ...]]:
    return await (await conn.execute(query, params)).fetchall()


async def _resume_point(conn: Connection, last_event_id: str | None) -> datetime:
    """When the alert named ``last_event_id`` was delivered, else now."""
    try:
        resumed = uuid.UUID(last_event_id) if last_event_id else None
    except ValueError:
        resumed = None
    cursor = await conn.execute(
        "SELECT coalesce((SELECT delivered_at FROM alert_feed WHERE alert_id = %s), now())",
        (resumed,),
    )
    row = await cursor.fetchone()
    assert row is not None
    at: datetime = row[0]
    return at
