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

from fastapi import APIRouter, Depends, Path, Response
from nats.errors import Error as NatsError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from budget.rpc import RpcFailure
from events import CallKind, ImageUsage, UsageRecorded, decode, encode, headers_for
from events.envelope import UtcDatetime
from events.rpc import CheckResult, ReleaseResult
from events.usage import MAX_AUDIO_SECONDS, MAX_TOKENS
from services.api.auth import INGEST, require
from services.api.context import ApiServices, current_services
from services.api.problems import Problem, field_errors

__all__ = ["CheckIn", "Recorded", "UsageIn", "router"]

router = APIRouter(tags=["ingest"], dependencies=[Depends(require(*INGEST))])
Api = Annotated[ApiServices, Depends(current_services)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
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
    audio_seconds: Annotated[Decimal, Field(ge=0, le=MAX_AUDIO_SECONDS)] = Decimal(0)
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
    summary="Release a reservation whose call was not made (released: 0 when it was already"
    " settled, released or expired)",
)
async def release(
    api: Api, reservation_id: Annotated[str, Path(min_length=1, max_length=100)]
) -> ReleaseResult:
    try:
        released = await api.tracker.checker.release_reporting(reservation_id)
    except RpcFailure as exc:
        raise Problem(503, f"the enforcer did not answer: {exc}") from None
    return ReleaseResult(released=released)


@router.post(
    "/usage",
    status_code=201,
    summary="Record one call's usage (201 stored; 200 with the stored event when this"
    " event_id was stored before; 409 when it was stored for another call)",
)
async def record(api: Api, body: UsageIn, response: Response) -> Recorded:
    event = _priced(api, body)
    nc = api.nc
    if nc is None or not nc.is_connected:
        raise Problem(503, "the event log (NATS) is unreachable; retry with the same event_id")
    subject = api.settings.topology.event_subject(event.SUBJECT)
    js = nc.jetstream()
    try:
        ack = await js.publish(subject, encode(event), headers=headers_for(event))
        if not ack.duplicate:
            return Recorded(event=event, stream_seq=ack.seq, duplicate=False)
        stored = decode((await js.get_msg(ack.stream, ack.seq)).data or b"")
    except (NatsError, TimeoutError) as exc:
        raise Problem(
            503, f"the event log did not store the event ({type(exc).__name__}); retry"
        ) from None
    # A retry answers with what was stored; the same id for another call is refused.
    if not isinstance(stored, UsageRecorded) or _call(stored, body) != _call(event, body):
        raise Problem(
            409,
            f"event_id {event.event_id} was stored for a different call; give this one its own",
        )
    response.status_code = 200
    return Recorded(event=stored, stream_seq=ack.seq, duplicate=True)


def _priced(api: ApiServices, body: UsageIn) -> UsageRecorded:
    fields = body.model_dump(exclude_none=True, exclude={"tags"})
    try:
        return api.tracker.usage_event(**fields, tags=body.tags)
    except ValidationError as exc:  # the event's own bounds, e.g. a raw usage object's
        # Locations are the event's (``usage.input_uncached``) or its Usage's
        # (``embedding_tokens``): both name a usage class.
        errors = [
            {"field": f"body.usage.{e['field'].removeprefix('usage.')}", "message": e["message"]}
            for e in field_errors(exc.errors())
        ]
        detail = f"{errors[0]['field']}: {errors[0]['message']}"
        raise Problem(422, detail, errors=errors) from None
    except ValueError as exc:  # inconsistent counts
        raise Problem(422, str(exc), errors=[{"field": "body", "message": str(exc)}]) from None


_CALL = {"provider", "model", "kind", "usage", "user_id", "project_id", "tags", "reservation_id"}


def _call(event: UsageRecorded, body: UsageIn) -> dict[str, Any]:
    """What makes two posts the same call (its time too, when the post gives one)."""
    return event.model_dump(include=_CALL | ({"occurred_at"} if body.occurred_at else set()))
