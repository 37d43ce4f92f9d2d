"""The writer of one projection version inside a runner's transaction: its checkpoint (a
tracking record, locked and advanced with the batch) and its share of the batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from projections.engine.isolation import Retired, apply_isolating_rejects
from projections.engine.projection import Applied, Connection, Projection

__all__ = ["VersionWriter", "consumer_name"]


def consumer_name(projection: Projection, version: int) -> str:
    return f"{projection.name}-v{version}"


@dataclass
class VersionWriter:
    projection: Projection
    version: int

    @property
    def durable(self) -> str:
        return consumer_name(self.projection, self.version)

    async def take_over(self, conn: Connection) -> int:
        """Wait for this version's single-writer lock (a second worker waits here as a hot
        standby); its checkpoint."""
        await conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"projection:{self.durable}",))
        row = await (
            await conn.execute(
                "SELECT stream_seq FROM projection_checkpoints WHERE name = %s AND version = %s",
                (self.projection.name, self.version),
            )
        ).fetchone()
        if row is None:
            raise RuntimeError(f"projection {self.durable} has no checkpoint row")
        return int(row[0])

    async def lock_checkpoint(self, conn: Connection) -> int:
        """The checkpoint, locked for this transaction; raises ``Retired`` once a newer
        version went live. FOR SHARE on the registry row: a swap (FOR UPDATE) waits for
        this batch, and this batch waits for a swap, then sees it was retired."""
        try:
            row = await (
                await conn.execute(
                    "SELECT r.active_version, c.stream_seq FROM projection_registry r"
                    " JOIN projection_checkpoints c ON c.name = r.name AND c.version = %s"
                    " WHERE r.name = %s FOR SHARE OF r FOR UPDATE OF c",
                    (self.version, self.projection.name),
                )
            ).fetchone()
        except psycopg.errors.UndefinedTable as exc:
            raise Retired(str(exc)) from exc
        if row is None or int(row[0]) > self.version:
            raise Retired(f"{self.durable} was replaced by version {row and row[0]}")
        return int(row[1])

    async def apply(self, conn: Connection, events: Sequence[Applied]) -> list[tuple[Applied, str]]:
        """Apply the events; the ones it refuses, with the reason."""

        async def apply(batch: Sequence[Applied]) -> None:
            await self.projection.apply(conn, self.version, batch)

        if not events:
            return []
        return await apply_isolating_rejects(conn, events, apply, label=self.durable)

    async def advance(self, conn: Connection, last_seq: int, applied: Sequence[Applied]) -> None:
        newest = max((a.occurred_at for a in applied), default=None)
        await conn.execute(
            "UPDATE projection_checkpoints SET stream_seq = %s,"
            " events_applied = events_applied + %s,"
            " newest_event_at = GREATEST(newest_event_at, %s), updated_at = now()"
            " WHERE name = %s AND version = %s",
            (last_seq, len(applied), newest, self.projection.name, self.version),
        )
