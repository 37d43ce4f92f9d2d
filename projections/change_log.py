"""The latest state per key (a policy, an alert rule) from set and delete events, in the
order of the log: the stream sequence, never the producers' clocks, decides which change
is newer, so a delete published by a host whose clock is behind still deletes.

Each event id is recorded once: a late re-send of an older change (from a producer's spool,
past JetStream's duplicate window) has a new sequence number but changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from projections.engine.projection import Applied, Connection, physical

__all__ = ["ChangeLog"]


@dataclass(frozen=True, kw_only=True)
class ChangeLog:
    """``table`` (key column ``key``, JSON column ``document``; a deletion is a tombstone)
    and ``<table>_events``, the ids of the events applied to it."""

    table: str
    key: str
    document: str

    @property
    def events(self) -> str:
        return f"{self.table}_events"

    def ddl(self, version: int) -> list[str]:
        return [
            f"""CREATE TABLE {physical(self.table, version)} (
                {self.key} text PRIMARY KEY,
                {self.document} jsonb,
                changed_at timestamptz NOT NULL,
                stream_seq bigint NOT NULL,
                deleted boolean NOT NULL)""",
            f"CREATE TABLE {physical(self.events, version)} (event_id uuid PRIMARY KEY)",
        ]

    async def record(
        self, conn: Connection, version: int, applied: Applied, key: str, document: str | None
    ) -> None:
        """Set ``key`` to ``document`` (None: delete it) unless this event was applied
        before or a change later in the log already has."""
        table, events = physical(self.table, version), physical(self.events, version)
        await conn.execute(
            f"""WITH fresh AS (
                INSERT INTO {events} (event_id) VALUES (%s) ON CONFLICT DO NOTHING
                RETURNING event_id)
            INSERT INTO {table} ({self.key}, {self.document}, changed_at, stream_seq, deleted)
            SELECT %s, %s::jsonb, %s, %s, %s FROM fresh
            ON CONFLICT ({self.key}) DO UPDATE SET {self.document} = EXCLUDED.{self.document},
                changed_at = EXCLUDED.changed_at, stream_seq = EXCLUDED.stream_seq,
                deleted = EXCLUDED.deleted
            WHERE {table}.stream_seq < EXCLUDED.stream_seq""".encode(),
            (
                applied.event.event_id,
                key,
                document,
                applied.event.occurred_at,
                applied.stream_seq,
                document is None,
            ),
        )
