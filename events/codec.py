"""Bytes on the wire <-> event objects, with upcasting of older schema versions."""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import Field, TypeAdapter, ValidationError

from events.access import ApiKeyCreated, ApiKeyRevoked
from events.alerts import AlertAcknowledged, AlertResolved, AlertRuleRemoved, AlertRuleSet
from events.envelope import Event
from events.generated import generated_on_read
from events.nul import nul_reason, surrogate_reason
from events.policy import PolicyDeleted, PolicySet, RequestBlocked
from events.upcasting import upcast
from events.usage import UsageRecorded, UsageRepriced

__all__ = [
    "EVENT_TYPES",
    "HEADER_MSG_ID",
    "DecodeError",
    "canonical",
    "decode",
    "encode",
    "headers_for",
]

HEADER_MSG_ID = "Nats-Msg-Id"

AnyEvent = (
    UsageRecorded
    | UsageRepriced
    | PolicySet
    | PolicyDeleted
    | RequestBlocked
    | AlertRuleSet
    | AlertRuleRemoved
    | AlertAcknowledged
    | AlertResolved
    | ApiKeyCreated
    | ApiKeyRevoked
)

EVENT_TYPES: dict[str, type[Event]] = {
    t.__name__: t
    for t in (
        UsageRecorded,
        UsageRepriced,
        PolicySet,
        PolicyDeleted,
        RequestBlocked,
        AlertRuleSet,
        AlertRuleRemoved,
        AlertAcknowledged,
        AlertResolved,
        ApiKeyCreated,
        ApiKeyRevoked,
    )
}

# One-pass validation of any current-version event, discriminated by ``type``.
_CURRENT: TypeAdapter[AnyEvent] = TypeAdapter(Annotated[AnyEvent, Field(discriminator="type")])


class DecodeError(ValueError):
    """The bytes are not a valid event; ``reason`` says why, for the dead-letter record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def canonical(event: Event) -> str:
    """The event's JSON with every default filled in and times in UTC."""
    return event.model_dump_json(exclude_none=True)


def encode(event: Event) -> bytes:
    """The event's bytes on the wire; ``ValueError`` when a field holds a NUL character
    (consumers would dead-letter it)."""
    data = canonical(event).encode()
    reason = nul_reason(data)
    if reason is not None:
        raise ValueError(f"{type(event).__name__} {reason}; remove it")
    return data


def headers_for(event: Event) -> dict[str, str]:
    """The only header: JetStream drops a re-send with the same id inside its window."""
    return {HEADER_MSG_ID: str(event.event_id)}


def decode(data: bytes) -> Event:
    """Decode one message: a current-version event in one pass, else upcast then validate.
    Anything that is not a valid event raises ``DecodeError`` with the reason."""
    unstorable = nul_reason(data) or surrogate_reason(data)
    if unstorable is not None:
        raise DecodeError(unstorable)
    try:
        event: Event = _CURRENT.validate_json(data)
    except ValidationError:
        event = _decode_slowly(data)
    # Judged on the decoded event, not on the bytes: a tag named "event_id" must not pass
    # for the envelope's, which the model would otherwise invent anew on every read.
    generated = generated_on_read(event)
    if generated == "event_id":
        raise DecodeError(_NO_EVENT_ID)
    if generated is not None:
        raise DecodeError(
            f"{generated}: required on the wire (a default would be made anew on every read)"
        )
    return event


def _decode_slowly(data: bytes) -> Event:
    """An older version, another type, or invalid: upcast and validate, or say why not."""
    try:
        # Decoded strictly (a BOM allowed, as json.loads of bytes allows it): json.loads of
        # bytes lets an unpaired surrogate's bytes through (surrogatepass), which no column
        # can store and the fast decoder refuses.
        obj = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DecodeError(f"not JSON: not UTF-8 text: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"not JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError("not a JSON object")
    model = EVENT_TYPES.get(obj["type"]) if isinstance(obj.get("type"), str) else None
    if model is None:
        raise DecodeError(f"unknown event type {_shown(obj.get('type'))}")
    version = obj.get("schema_version")
    if isinstance(version, int) and version > model.SCHEMA_VERSION:
        raise DecodeError(
            f"{model.__name__} schema_version {version} is newer than this reader's "
            f"({model.SCHEMA_VERSION}); upgrade budget-manager and replay the dead letters"
        )
    try:
        return model.model_validate(upcast(obj, model.SCHEMA_VERSION))
    except ValidationError as exc:
        raise DecodeError(_describe(exc)) from None
    except (ValueError, TypeError, KeyError, ArithmeticError, RecursionError) as exc:
        # An older version's fields of the wrong shape (e.g. a token count of 1e400)
        raise DecodeError(f"cannot upcast: {type(exc).__name__}: {exc}") from None


_NO_EVENT_ID = "event_id: required at the top level (send the same value as Nats-Msg-Id)"


def _shown(value: object) -> str:
    """A value for a reason, cut short: the reason travels in a header."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
    )
