"""What a projection is: versioned tables, the events it reads, and a batch-wise apply."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol, TypeVar

from psycopg import AsyncConnection

from events import Event, Topology, UsageRecorded, canonical
from projections.engine.fast_codec import FastEvent, FastUsageRecorded, document

__all__ = ["Applied", "Projection", "Rejected", "SharedLedger", "physical"]

Connection = AsyncConnection[Any]
E = TypeVar("E", bound=Event)


@dataclass(frozen=True, slots=True)
class Applied:
    """A validated event, its position in the log, and its canonical JSON (defaults filled
    in, UTC times; made on first use: usage reaches PostgreSQL as rows, not documents).

    Usage events usually come from the fast decoder (``projections.engine.fast_codec``): their
    pydantic model is built only when code asks for ``event``. Dispatch on
    ``event_type``; read a usage event's values through ``recorded``.

    A ``deferred`` one is a usage event not decoded yet, for a consumer that reads what the
    usage ledger recorded of it (``projections.ledger``) and decodes only what no other
    consumer has recorded (``resolve``)."""

    stream_seq: int
    event_type: type[Event]
    occurred_at: datetime
    """UTC; of a deferred event, when the log stored it."""
    _decoded: FastEvent | Event | None = field(repr=False, compare=False)
    _model: list[Event] = field(default_factory=list, repr=False, compare=False)
    """The pydantic model once built (a list, so a frozen instance can cache it)."""
    _decode: Callable[[], Applied | str] | None = field(default=None, repr=False, compare=False)
    """Of a deferred event: its decoding, or why it goes to the dead letters."""
    publisher: str | None = None
    """Who published it, by its subject (``Event.BY_PUBLISHER``): a NATS user, or the HTTP
    API's ``api-key-<id>``; None on the bare subject (published before there were
    publishers' subjects) and for other events."""

    @classmethod
    def of(cls, stream_seq: int, event: Event, *, publisher: str | None = None) -> Applied:
        """An event decoded by pydantic (``events.decode``)."""
        return cls(stream_seq, type(event), event.occurred_at, event, [event], publisher=publisher)

    @classmethod
    def of_fast(cls, stream_seq: int, event: FastEvent, *, publisher: str | None = None) -> Applied:
        """An event decoded by the fast decoder."""
        return cls(stream_seq, event.MODEL, event.occurred_at, event, publisher=publisher)

    @classmethod
    def deferred(
        cls,
        stream_seq: int,
        event_type: type[Event],
        stored_at: datetime,
        decode: Callable[[], Applied | str],
    ) -> Applied:
        """An event of ``event_type`` (by its subject) whose decoding waits for ``resolve``."""
        return cls(stream_seq, event_type, stored_at, None, [], decode)

    @property
    def is_deferred(self) -> bool:
        return self._decode is not None

    def resolve(self) -> Applied | str:
        """The event decoded (itself, unless deferred), or why it is dead-lettered."""
        return self if self._decode is None else self._decode()

    @property
    def document(self) -> str:
        """The canonical JSON: the same bytes from either decoder."""
        decoded = self._decoded
        if isinstance(decoded, Event):
            return canonical(decoded)
        if decoded is None:
            raise TypeError(f"event at stream sequence {self.stream_seq} is not decoded yet")
        return document(decoded)

    @property
    def event(self) -> Event:
        """The pydantic model, built on first use: only code that needs it pays for it."""
        if not self._model:
            # The fast decoder accepts only what pydantic accepts with identical values,
            # and the canonical JSON reads back as the same event.
            self._model.append(self.event_type.model_validate_json(self.document))
        return self._model[0]

    def event_of(self, event_type: type[E]) -> E | None:
        """The pydantic model if this is an ``event_type``, else None (built only then)."""
        if not issubclass(self.event_type, event_type):
            return None
        event = self.event
        assert isinstance(event, event_type)
        return event

    @property
    def recorded(self) -> FastUsageRecorded | UsageRecorded:
        """A ``UsageRecorded``'s values, with the model's attribute names, without building
        the model when the fast decoder read it."""
        decoded = self._decoded
        if not isinstance(decoded, FastUsageRecorded | UsageRecorded):
            what = "not decoded yet" if decoded is None else "not a UsageRecorded"
            raise TypeError(f"the {self.event_type.__name__} at {self.stream_seq} is {what}")
        return decoded


class Rejected(Exception):
    """A valid event a projection cannot apply (e.g. a correction of an event it never
    recorded): the engine dead-letters it with this message as the reason.

    ``rejects``: every event of the batch the projection refuses, by stream sequence, with
    its reason, when it can tell them all at once: the engine then applies the batch again
    without them, rather than event by event."""

    def __init__(self, message: str, *, rejects: Mapping[int, str] | None = None) -> None:
        super().__init__(message)
        self.rejects: Mapping[int, str] = rejects or {}


def physical(table: str, version: int) -> str:
    """Tables are versioned so a rebuild can fill ``name_vN+1`` beside the live ``name_vN``;
    readers use the view ``name``, which always points at the active version."""
    return f"{table}_v{version}"


class SharedLedger(Protocol):
    """What projections may share: the engine records each batch in it once, before any
    of them applies the batch, in the same transaction (``projections.ledger``)."""

    @property
    def reads_recorded(self) -> bool:
        """Its projections read its rows, never the batch's decoded usage: the runner
        defers decoding usage events and decodes them only when no writer has recorded
        them yet (``positions``); with a backlog, it first waits for another writer that
        is recording to do so."""

    @property
    def keys(self) -> str:
        """How its rows key what the events do not say (a model's key): part of the shape
        of every projection that reads it (``engine.shapes``), so a release that keys
        otherwise rebuilds them from the log."""

    async def positions(self, conn: Connection) -> Mapping[str, int]:
        """How far each writer has recorded the log (committed), by writer."""

    async def stage(
        self, conn: Connection, batch: Sequence[Applied], *, writer: str
    ) -> Callable[[], Awaitable[None]]:
        """Stage what the batch adds (``writer`` names the consumer recording it), and
        return what records it next in the same transaction: statements that read nothing
        back, unless the batch holds corrections (the runner pipelines them)."""

    async def record(self, conn: Connection, batch: Sequence[Applied], *, writer: str) -> None:
        """``stage`` the batch and record it at once."""


class Projection(ABC):
    name: ClassVar[str]
    tables: tuple[str, ...]
    event_types: ClassVar[tuple[type[Event], ...]]
    ledger: SharedLedger | None = None
    """The shared ledger this projection reads, if any: recorded before ``apply``."""

    def filter_subjects(self, topology: Topology) -> list[str]:
        return [
            subject
            for t in self.event_types
            for subject in topology.event_subjects(t.SUBJECT, by_publisher=t.BY_PUBLISHER)
        ]

    @abstractmethod
    def ddl(self, version: int) -> list[str]:
        """CREATE statements for this version's tables, with what ``apply`` relies on
        (primary keys and unique constraints for its ``ON CONFLICT``)."""

    def indexes(self, version: int) -> list[str]:
        """CREATE statements for the indexes only readers need. A rebuild builds them once
        its version has caught up, before the swap (nothing reads the version until
        then): one sort per index instead of maintaining each at every row."""
        return []

    def views(self, version: int) -> dict[str, str]:
        """The stable names readers use, each a query over this version's tables."""
        return {table: f"SELECT * FROM {physical(table, version)}" for table in self.tables}

    @abstractmethod
    async def apply(self, conn: Connection, version: int, batch: Sequence[Applied]) -> None:
        """Apply events in log order. Runs inside the engine's transaction, which also
        advances the checkpoint; must be idempotent per event_id (a re-send of the same
        event under a new sequence number changes nothing)."""

    async def went_live(  # noqa: B027 - optional: most projections send nothing
        self, conn: Connection, version: int, *, after_seq: int
    ) -> None:
        """Called by a rebuild in the transaction that makes ``version`` live; the version
        it replaces had applied the log up to ``after_seq``. Whatever only the live version
        may do (send alerts) is still owed for the events after it."""
