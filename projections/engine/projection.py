"""What a projection is: versioned tables, the events it reads, and a batch-wise apply."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from psycopg import AsyncConnection

from events import Event, Topology

__all__ = ["Applied", "Projection", "Rejected", "physical"]

Connection = AsyncConnection[Any]


@dataclass(frozen=True, slots=True)
class Applied:
    """A validated event, its position in the log, and its canonical JSON (what the
    projections hand to PostgreSQL: defaults filled in, UTC times)."""

    stream_seq: int
    event: Event
    document: str


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


class Projection(ABC):
    name: ClassVar[str]
    tables: tuple[str, ...]
    event_types: ClassVar[tuple[type[Event], ...]]

    def filter_subjects(self, topology: Topology) -> list[str]:
        return [topology.event_subject(t.SUBJECT) for t in self.event_types]

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
