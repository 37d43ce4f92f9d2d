"""Bytes on the wire <-> event objects, with upcasting of older schema versions."""

from __future__ import annotations

import json
from collections.abc import Mapping

from pydantic import ValidationError

from events.envelope import Event
from events.upcasting import upcast
from events.usage import UsageRecorded

__all__ = [
    "EVENT_TYPES",
    "HEADER_EVENT_TYPE",
    "HEADER_MSG_ID",
    "HEADER_SCHEMA_VERSION",
    "DecodeError",
    "decode",
    "encode",
    "headers_for",
]

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_EVENT_TYPE = "Budget-Event-Type"
HEADER_SCHEMA_VERSION = "Budget-Schema-Version"

EVENT_TYPES: dict[str, type[Event]] = {"UsageRecorded": UsageRecorded}


class DecodeError(ValueError):
    """The bytes are not a valid event; ``reason`` says why, for the dead-letter record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode(event: Event) -> bytes:
    return event.model_dump_json(exclude_none=True).encode()


def headers_for(event: Event) -> dict[str, str]:
    return {
        HEADER_MSG_ID: str(event.event_id),
        HEADER_EVENT_TYPE: type(event).__name__,
        HEADER_SCHEMA_VERSION: str(type(event).SCHEMA_VERSION),
    }


def decode(data: bytes, headers: Mapping[str, str] | None = None) -> Event:
    """Decode one message. Headers are optional (any NATS client may publish); when they
    name the current version of a known type, the JSON is validated in one pass."""
    if headers:
        model = EVENT_TYPES.get(headers.get(HEADER_EVENT_TYPE, ""))
        if model is not None and headers.get(HEADER_SCHEMA_VERSION) == str(model.SCHEMA_VERSION):
            try:
                return model.model_validate_json(data)
            except ValidationError as exc:
                raise DecodeError(_describe(exc)) from None
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError("not a JSON object")
    model = EVENT_TYPES.get(str(obj.get("type")))
    if model is None:
        raise DecodeError(f"unknown event type {obj.get('type')!r}")
    try:
        return model.model_validate(upcast(obj, model.SCHEMA_VERSION))
    except ValidationError as exc:
        raise DecodeError(_describe(exc)) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise DecodeError(f"cannot upcast: {exc}") from None


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
    )
