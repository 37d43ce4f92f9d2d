"""For host apps without NATS: check a budget before a call, record usage after it.

The same implementation as the Python tracker: ``check_budget`` (local answer or the
enforcer's reservation) and ``usage_event`` (normalising, pricing). A usage post answers
once JetStream has stored the event; its ``event_id`` (given, or made here) is the
message id, and every projection counts an event id once, so a retried post never
counts twice.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from nats.errors import Error as NatsError
from pydantic import BaseModel, ConfigDict, Field

from budget.rpc import RpcFailure
from events import CallKind, ImageUsage, UsageRecorded, encode, headers_for
from events.envelope import UtcDatetime
from events.rpc import CheckResult
from services.api.auth import INGEST, require
from services.api.context import ApiServices, current_services
from services.api.problems import Problem

__all__ = ["CheckIn", "Recorded", "UsageIn", "router"]

router = APIRouter(tags=["ingest"], dependencies=[Depends(require(*INGEST))])
Api = Annotated[ApiServices, Depends(current_services)]
Tokens = Annotated[int, Field(ge=0, le=10**12)]
Text = Annotated[str, Field(min_length=1, max_length=200)]


class CheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Text
    provider: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    estimated_tokens: Tokens = Field(default=0, description="priced as output tokens")
    estimated_cost: Annotated[Decimal, Field(ge=0, le=10**9)] | None = Field(
        default=None, description="USD; overrides estimated_tokens"
    )
    user_id: Text | None = None
    project_id: Text | None = None
    reserve: bool = Field(default=True, description="hold the estimate under BLOCK/THROTTLE")


class UsageIn(BaseModel):
    """Counts in the seed's convention: ``input_tokens`` includes cached and cache-write
    tokens, ``output_tokens`` includes reasoning. Or ``usage``: a provider's raw usage
    object (OpenAI, Anthropic, Google) as JSON."""

    model_config = ConfigDict(extra="forbid")

    event_id: uuid.UUID | None = Field(default=None, description="retry with the same id")
    model: Text
    provider: Annotated[str, Field(min_length=1, max_length=100)]
    input_tokens: Tokens = 0
    output_tokens: Tokens = 0
    cached_tokens: Tokens = 0
    cache_write_tokens: Tokens = 0
    reasoning_tokens: Tokens = 0
    embedding_tokens: Tokens = 0
    audio_seconds: Annotated[Decimal, Field(ge=0, le=10**9)] = Decimal(0)
    images: ImageUsage | None = None
    usage: dict[str, Any] | None = None
    kind: CallKind | None = None
    user_id: Text | None = None
    project_id: Text | None = None
    tags: dict[Annotated[str, Field(max_length=100)], Annotated[str, Field(max_length=500)]] = (
        Field(default_factory=dict, max_length=50)
    )
    occurred_at: UtcDatetime | None = Field(default=None, description="default: now")
    reservation_id: Annotated[str, Field(max_length=100)] | None = None


class Recorded(BaseModel):
    event: UsageRecorded
    stream_seq: int
    duplicate: bool = Field(description="an earlier post stored this event_id already")


@router.post("/check", summary="May this call go ahead? (reserves under BLOCK/THROTTLE)")
async def check(api: Api, body: CheckIn) -> CheckResult:
    try:
        return await api.tracker.check_budget(
            body.model,
            body.estimated_tokens,
            body.user_id,
            body.project_id,
            provider=body.provider,
            estimated_cost=body.estimated_cost,
            reserve=body.reserve,
        )
    except RpcFailure as exc:
        raise Problem(503, f"the enforcer did not answer: {exc}") from None


@router.post(
    "/reservations/{reservation_id}/release",
    status_code=204,
    summary="Release a reservation whose call was not made",
)
async def release(api: Api, reservation_id: str) -> Response:
    try:
        await api.tracker.release_reservation(reservation_id)
    except RpcFailure as exc:
        raise Problem(503, f"the enforcer did not answer: {exc}") from None
    return Response(status_code=204)


@router.post(
    "/usage",
    status_code=201,
    summary="Record one call's usage (201 stored; 200 when this event_id was stored before)",
)
async def record(api: Api, body: UsageIn, response: Response) -> Recorded:
    fields = body.model_dump(exclude_none=True, exclude={"tags"})
    try:
        event = api.tracker.usage_event(**fields, tags=body.tags)
    except ValueError as exc:
        raise Problem(422, str(exc), errors=[{"field": "body", "message": str(exc)}]) from None
    nc = api.nc
    if nc is None or not nc.is_connected:
        raise Problem(503, "the event log (NATS) is unreachable; retry with the same event_id")
    subject = api.settings.topology.event_subject(event.SUBJECT)
    try:
        ack = await nc.jetstream().publish(subject, encode(event), headers=headers_for(event))
    except (NatsError, TimeoutError) as exc:
        raise Problem(
            503, f"the event log did not store the event ({type(exc).__name__}); retry"
        ) from None
    if ack.duplicate:
        response.status_code = 200
    return Recorded(event=event, stream_seq=ack.seq, duplicate=bool(ack.duplicate))
