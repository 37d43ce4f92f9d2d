"""The envelope every event shares: identity, type, schema version, event time, producer."""

from __future__ import annotations

import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, ClassVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, WithJsonSchema

from events.limits import NAME_MAX

__all__ = ["RFC3339", "Event", "Producer", "UtcDatetime", "new_event_id", "utc_now"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): time-ordered, so the ids index into B-trees at their right edge.
    Its 74 random bits come from the OS: a reservation id is what settles a hold, and ids
    from a seeded generator could be predicted by a host that saw enough of them."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits; 74 are used
    value = (millis << 80) | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64
    value |= (0b10 << 62) | (rand & ((1 << 62) - 1))
    return uuid.UUID(int=value)


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 has no UTC datetime
        raise ValueError("out of range once converted to UTC") from None


RFC3339 = (
    r"(?!0000)[0-9]{4}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
)
"""A time on the wire (RFC 3339 with ``T``, seconds, ``Z`` or ``+hh:mm``), as the schemas
hold producers to it and the consumers' fast path reads it. JSON Schema's ``date-time``
alone (Ajv's) also admits what the models refuse: a leap second (``23:59:60``), an offset
of hours only (``+01``), the year 0000."""

UtcDatetime = Annotated[
    AwareDatetime,
    AfterValidator(_to_utc),
    WithJsonSchema(
        {"type": "string", "format": "date-time", "pattern": f"^{RFC3339}$"}, mode="validation"
    ),
]
"""A timezone-aware datetime, normalised to UTC; naive datetimes are rejected."""


class Producer(BaseModel):
    """Who published an event: for tracing a bad event back to the host app that sent it.
    Only the service is required; without host or pid they are unknown."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    service: str = Field(max_length=NAME_MAX)
    # Absent stays None, never this reader's host or pid: a default made on read would
    # differ from read to read (and producers in other languages may not send them).
    host: str | None = Field(default=None, max_length=255)
    pid: int | None = None
    library_version: str = "0.1.0"

    @classmethod
    def here(cls, service: str) -> Producer:
        """This process, publishing as ``service``."""
        return cls(service=service, host=socket.gethostname(), pid=os.getpid())


class Event(BaseModel):
    """Base of every immutable fact on the log.

    ``event_id`` is also sent as ``Nats-Msg-Id``, so JetStream drops re-sends inside its
    duplicate window; projections deduplicate by it beyond that window.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Each concrete event sets these; ``type`` is also a Literal field for the JSON contract.
    SCHEMA_VERSION: ClassVar[int] = 1
    SUBJECT: ClassVar[str]
    """Subject suffix under <prefix>.events (see ``Topology.event_subject``)."""
    BY_PUBLISHER: ClassVar[bool] = False
    """True when each publisher publishes on a subject of its own, ``<SUBJECT>.<publisher>``
    (``Topology.event_subject``): NATS permits a host credential its own only, so the
    consumers know who published each event. The bare subject, where earlier releases
    published, is still read (publisher unknown)."""
    REPEATS_OCCURRED_AT: ClassVar[bool] = False
    """True when ``occurred_at`` is another, earlier event's (a correction's is the
    corrected call's), so its age says nothing about this event."""

    event_id: uuid.UUID = Field(default_factory=new_event_id)
    schema_version: int
    occurred_at: UtcDatetime = Field(
        description="UTC time of the fact itself (for usage: the provider call). "
        "Periods are assigned by this, never by arrival time."
    )
    producer: Producer | None = None
