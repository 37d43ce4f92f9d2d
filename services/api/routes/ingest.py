"""For host apps without NATS: check a budget before a call, record usage after it.

The same implementation as the Python tracker: ``check_budget`` (local answer or the
enforcer's reservation) and ``usage_event`` (normalising, pricing). A usage post answers
once JetStream has stored the event; its ``event_id`` (given, or made here) is the
message id, and every projection counts an event id once, so a retried post never
counts twice.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Depends, Path, Response
from nats.errors import Error as NatsError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from budget.rpc import Refused, RpcFailure, Throttled
from budget.usage import UsageCountError
from events import (
    CallKind,
    ImageUsage,
    OutOfBounds,
    Producer,
    UsageRecorded,
    decode,
    encode,
    headers_for,
)
from events.envelope import UtcDatetime
from events.limits import NAME_MAX
from events.rpc import CheckResult, ReleaseResult
from events.subjects import API_KEY_CALLER, caller_token
from events.usage import MAX_DECIMAL_PLACES, MAX_TOKENS, Seconds, WrittenPlaces
from projections.ledger import SHARED_LEDGER
from services.api.auth import Principal
from services.api.context import ApiServices, current_services
from services.api.exact_json import ExactJsonRoute
from services.api.limits import limited_check, limited_usage
from services.api.problems import LIMITED_RESPONSES, Problem, field_errors
from services.reservations import FOREIGN, foreign_holds

__all__ = [
    "BatchRecorded",
    "CheckIn",
    "Recorded",
    "UsageBatch",
    "UsageIn",
    "record_call",
    "router",
]

# Each route's dependency authenticates (ingest or admin) and limits per key: checks and
# releases as the enforcer limits a host, usage posts alike in a bucket of their own.
router = APIRouter(route_class=ExactJsonRoute, tags=["ingest"], responses=LIMITED_RESPONSES)
MAX_BATCH = 1000
Api = Annotated[ApiServices, Depends(current_services)]


def _a_count(value: object) -> object:
    """A count is a JSON number, as in a raw usage object (``budget.usage.token_count``):
    never ``true`` or ``"500"``, which a lax integer would take for 1 and 500 tokens."""
    if isinstance(value, bool | str):
        raise ValueError(f"must be a whole number of tokens, got {json.dumps(value)}")
    return value


Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS), BeforeValidator(_a_count)]
Text = Annotated[str, Field(min_length=1, max_length=NAME_MAX)]


class CheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Text
    provider: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    estimated_tokens: Tokens = Field(default=0, description="priced as output tokens")
    # a cost's places (``events.usage.Usd``): more failed the enforcer's request, a 500
    estimated_cost: (
        Annotated[Decimal, Field(ge=0, le=10**9, decimal_places=MAX_DECIMAL_PLACES), WrittenPlaces]
        | None
    ) = Field(default=None, description="USD; overrides estimated_tokens")
    user_id: Text | None = None
    project_id: Text | None = None
    reserve: bool = Field(default=True, description="hold the estimate under BLOCK/THROTTLE")
    ttl_seconds: Annotated[float, Field(gt=0, le=86400)] | None = Field(
        default=None,
        description="seconds the hold lives unless settled or released (default the"
        " enforcer's reservation_ttl, at most its reservation_ttl_max)",
    )


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
    audio_seconds: Seconds = Decimal(0)
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


Checker = Annotated[Principal, Depends(limited_check)]


def key_caller(principal: Principal) -> str:
    """Whom the enforcer reserves for when a key checks: the key itself, so that only it
    may release its holds (the API's own credential may release anyone's); also who
    publishes the usage the key posts (``_store``)."""
    return caller_token(f"{API_KEY_CALLER}{principal.key_id}")


@router.post("/check", summary="May this call go ahead? (reserves under BLOCK/THROTTLE)")
async def check(api: Api, principal: Checker, body: CheckIn) -> CheckResult:
    try:
        return await api.tracker.check_budget(
            body.model,
            body.estimated_tokens,
            body.user_id,
            body.project_id,
            provider=body.provider,
            estimated_cost=body.estimated_cost,
            reserve=body.reserve,
            caller=key_caller(principal),
            ttl_seconds=body.ttl_seconds,
        )
    except RpcFailure as exc:
        raise Problem(503, f"the enforcer did not answer: {exc}") from None


@router.post(
    "/reservations/{reservation_id}/release",
    summary="Release a reservation this key's check made, whose call was not made"
    " (released: 0 when it was already settled, released or expired; 403 when another"
    " key's check made it)",
)
async def release(
    api: Api,
    principal: Checker,
    reservation_id: Annotated[str, Path(min_length=1, max_length=100)],
) -> ReleaseResult:
    try:
        released = await api.tracker.checker.release_reporting(
            reservation_id, caller=key_caller(principal)
        )
    except Refused as exc:
        if FOREIGN not in str(exc):  # the enforcer failed (its database)
            raise Problem(503, f"the enforcer could not release it: {exc}") from None
        raise Problem(
            403,
            f"reservation {reservation_id} was made by another key's check: only that key"
            " may release it",
        ) from None
    except Throttled as exc:
        raise Problem(
            429, f"the enforcer limits this key: {exc}", retry_after=exc.retry_after
        ) from None
    except RpcFailure as exc:
        raise Problem(503, f"the enforcer did not answer: {exc}") from None
    return ReleaseResult(released=released)


Recorder = Annotated[Principal, Depends(limited_usage)]


@router.post(
    "/usage",
    status_code=201,
    summary="Record one call's usage (201 stored; 200 with the stored event when this"
    " event_id was stored before; 409 when it was stored for another call; 403 when its"
    " reservation_id is another key's hold)",
)
async def record(api: Api, principal: Recorder, body: UsageIn, response: Response) -> Recorded:
    response.status_code, recorded = await record_call(api, principal, body)
    return recorded


async def record_call(
    api: ApiServices, principal: Principal, body: UsageIn
) -> tuple[int, Recorded]:
    """``POST /usage``'s work for an admitted key (``services.api.usage_fast_path`` calls
    it too): the status (201 stored, 200 a duplicate) and the answer."""
    await _own_reservations(api, principal, [("body", body)])
    event = _priced(api, principal, body, "body")
    [(status, stored, seq)] = await _store(api, principal, [(body, event)])
    if status == "conflict":
        raise Problem(
            409,
            f"event_id {event.event_id} was stored for a different call; give this one its own",
        )
    duplicate = status == "duplicate"
    return (200 if duplicate else 201), Recorded(event=stored, stream_seq=seq, duplicate=duplicate)


class UsageBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[UsageIn] = Field(min_length=1, max_length=MAX_BATCH)


class BatchItem(BaseModel):
    event_id: uuid.UUID
    status: Literal["stored", "duplicate", "conflict"] = Field(
        description="conflict: this event_id was stored for another call; nothing changed"
    )
    stream_seq: int
    cost: Decimal | None = Field(
        description="USD as counted (a duplicate's: the stored event's; a conflict's: this"
        " call's, counted nowhere); null when the model has no price"
    )


class BatchRecorded(BaseModel):
    results: list[BatchItem] = Field(description="in the order of the request's events")


@router.post(
    "/usage/batch",
    summary=f"Record up to {MAX_BATCH} calls in one request: each as POST /usage would,"
    " answered once JetStream has stored them all (one wrong event refuses the batch)",
)
async def record_batch(api: Api, principal: Recorder, body: UsageBatch) -> BatchRecorded:
    await _own_reservations(
        api, principal, [(f"body.events.{i}", item) for i, item in enumerate(body.events)]
    )
    priced = [
        (item, _priced(api, principal, item, f"body.events.{i}"))
        for i, item in enumerate(body.events)
    ]
    # Each result is the outcome's event: for a duplicate the one stored under its id,
    # whose cost is what counted (a price may have changed since), as POST /usage answers.
    return BatchRecorded(
        results=[
            BatchItem(event_id=event.event_id, status=status, stream_seq=seq, cost=event.cost)
            for status, event, seq in await _store(api, principal, priced)
        ]
    )


async def _own_reservations(
    api: ApiServices, principal: Principal, calls: list[tuple[str, UsageIn]]
) -> None:
    """A usage event settles the hold its ``reservation_id`` names, freeing what it kept
    beyond the cost: refuse one that another key's check made, as a release is refused.
    (A hold that is gone, settled or expired, is no one's: settling it changes nothing.)"""
    named = {body.reservation_id: where for where, body in calls if body.reservation_id}
    if not named:
        return
    try:
        async with api.database.connection() as conn:
            foreign = await foreign_holds(conn, named, key_caller(principal))
    except psycopg.Error:
        raise Problem(503, "the database did not answer whose reservations these are") from None
    if foreign:
        errors = [
            {"field": f"{named[r]}.reservation_id", "message": "another key's check made it"}
            for r in sorted(foreign)
        ]
        raise Problem(
            403,
            f"reservation {min(foreign)} was made by another key's check: only that key"
            " may settle it",
            errors=errors,
        )


Outcome = tuple[Literal["stored", "duplicate", "conflict"], UsageRecorded, int]


async def _store(
    api: ApiServices, principal: Principal, calls: list[tuple[UsageIn, UsageRecorded]]
) -> list[Outcome]:
    """Publish the events concurrently and wait for JetStream's acks. A re-sent event_id
    answers with the event stored under it, or ``conflict`` when that was another call:
    JetStream tells within its duplicate window, the usage ledger beyond it (an event it
    holds is not published again).

    Each is published by the key that posted it (``<prefix>.events.usage.recorded.
    api-key-<id>``; no NATS user is named so), which the usage history shows."""
    nc = api.nc
    if nc is None or not nc.is_connected:
        raise Problem(503, "the event log (NATS) is unreachable; retry with the same event_id")
    js = nc.jetstream()
    topology = api.settings.topology
    subject = topology.event_subject(UsageRecorded.SUBJECT, publisher=key_caller(principal))
    stored_at = await _ledger_sequences(
        api, [event.event_id for body, event in calls if body.event_id is not None]
    )

    async def as_stored(body: UsageIn, event: UsageRecorded, seq: int) -> Outcome:
        stored = decode((await js.get_msg(topology.event_stream.name, seq)).data or b"")
        if not isinstance(stored, UsageRecorded) or _call(stored, body) != _call(event, body):
            return "conflict", event, seq
        return "duplicate", stored, seq

    async def one(body: UsageIn, event: UsageRecorded) -> Outcome:
        seq = stored_at.get(event.event_id)
        if seq is not None:
            return await as_stored(body, event, seq)
        ack = await js.publish(subject, encode(event), headers=headers_for(event))
        if not ack.duplicate:
            return "stored", event, ack.seq
        return await as_stored(body, event, ack.seq)

    try:
        return list(await asyncio.gather(*(one(body, event) for body, event in calls)))
    except (NatsError, TimeoutError) as exc:
        # Sent but not confirmed (an ack timed out, the connection dropped): JetStream may
        # have stored them, so only a retry under the same ids is safe, and a post without
        # an event_id has its ids made here: say which.
        ids = [str(event.event_id) for _, event in calls]
        retry = f"event_id {ids[0]}" if len(ids) == 1 else "the event_ids listed, in order"
        raise Problem(
            503,
            f"the event log did not confirm storing the events ({type(exc).__name__}) but may"
            f" have stored them: retry with {retry} (event_ids), so none counts twice",
            event_ids=ids,
        ) from None


async def _ledger_sequences(api: ApiServices, event_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """The stream sequence of each of ``event_ids`` (those the client gave: one made here is
    new) that the usage ledger holds. JetStream forgets a message id after its duplicate
    window (2 minutes) and stores a re-send as new, which the ledger then counts nowhere:
    the post must be answered from what was stored."""
    if not event_ids:
        return {}
    try:
        async with api.database.connection() as conn:
            cursor = await conn.execute(
                f"SELECT event_id, stream_seq FROM {SHARED_LEDGER.usage} WHERE event_id = ANY(%s)",
                (event_ids,),
            )
            return {row[0]: row[1] for row in await cursor.fetchall()}
    except psycopg.Error:
        raise Problem(
            503,
            "the database did not answer whether these event_ids were stored; nothing was"
            " stored: retry with the same event_ids",
        ) from None


def _priced(api: ApiServices, principal: Principal, body: UsageIn, where: str) -> UsageRecorded:
    """The event of a call ``principal`` posted: its producer is that key (the publisher
    its subject names), never the API's own process, which only relays it: the host app
    behind the key is whom a bad event is traced back to."""
    fields = body.model_dump(exclude_none=True, exclude={"tags"})
    # Counts read from a raw usage object are wrong in it (``body.usage``), never in the
    # classes it is normalised to, which the client did not send (``input_uncached``).
    counts = f"{where}.usage" if body.usage is not None else where
    try:
        event = api.tracker.usage_event(**fields, tags=body.tags)
    except ValidationError as exc:  # the event's own bounds, e.g. a raw usage object's sums
        errors = [
            {"field": _event_field(e["field"], where, counts), "message": e["message"]}
            for e in field_errors(exc.errors())
        ]
        detail = f"{errors[0]['field']}: {errors[0]['message']}"
        raise Problem(422, detail, errors=errors) from None
    except OutOfBounds as exc:  # occurred_at too far ahead or back
        errors = [{"field": f"{where}.occurred_at", "message": str(exc)}]
        raise Problem(422, str(exc), errors=errors) from None
    except UsageCountError as exc:  # one count, e.g. a raw object's negative prompt_tokens
        field = f"{counts}.{exc.field}"
        errors = [{"field": field, "message": str(exc)}]
        raise Problem(422, f"{field}: {exc}", errors=errors) from None
    except ValueError as exc:  # inconsistent counts
        raise Problem(422, str(exc), errors=[{"field": counts, "message": str(exc)}]) from None
    return event.model_copy(update={"producer": Producer(service=key_caller(principal))})


def _event_field(location: str, where: str, counts: str) -> str:
    """Where in the post an error of the event (``cost``) or of its Usage (``output_text``,
    ``usage.output_text``) lies: a Usage's is in the counts it was normalised from, as a
    whole (``counts``: a raw usage object's sums exceed a class's bound)."""
    top = location.split(".", 1)[0]
    if top in UsageRecorded.model_fields and top != "usage":
        return f"{where}.{location}"
    return counts


_CALL = {"provider", "model", "kind", "usage", "user_id", "project_id", "tags", "reservation_id"}


def _call(event: UsageRecorded, body: UsageIn) -> dict[str, Any]:
    """What makes two posts the same call (its time too, when the post gives one)."""
    return event.model_dump(include=_CALL | ({"occurred_at"} if body.occurred_at else set()))
