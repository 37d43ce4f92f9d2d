"""The writer of one projection version inside a runner's transaction: its checkpoint (a
tracking record, locked and advanced with the batch) and its share of the batch."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from nats.js import JetStreamContext

from projections.engine.isolation import Retired, apply_events
from projections.engine.log import LogMark, verify_log
from projections.engine.projection import Applied, Connection, Projection

__all__ = [
    "Move",
    "VersionWriter",
    "advance",
    "consumer_name",
    "lock_checkpoints",
    "log_marks",
]

log = logging.getLogger(__name__)

# The backend holding a projection version's writer lock (``pg_advisory_lock`` of a bigint
# key: its high and low 32 bits in classid and objid).
_HOLDER = """
    SELECT l.pid FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = ((hashtext(%(key)s)::bigint >> 32) & 4294967295)::oid
      AND l.objid = (hashtext(%(key)s)::bigint & 4294967295)::oid"""


def consumer_name(projection: Projection, version: int) -> str:
    return f"{projection.name}-v{version}"


@dataclass
class VersionWriter:
    projection: Projection
    version: int

    @property
    def durable(self) -> str:
        return consumer_name(self.projection, self.version)

    async def take_over(self, conn: Connection) -> None:
        """Wait for this version's single-writer lock (a second worker waits here as a hot
        standby, saying so)."""
        key = f"projection:{self.durable}"
        taken = await (
            await conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,))
        ).fetchone()
        if not (taken and taken[0]):
            holder = await (await conn.execute(_HOLDER, {"key": key})).fetchone()
            log.warning(
                "%s is written by another worker (PostgreSQL backend pid %s); waiting as its"
                " hot standby. If that is not meant (a group worker such as `budget worker"
                " usage` and a worker of one of its projections), stop one of them",
                self.durable,
                holder[0] if holder else "unknown",
            )
            await conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))

    async def verify_log(self, conn: Connection, js: JetStreamContext, stream: str) -> None:
        """``log.verify_log`` of this version's checkpoint alone (a worker about to rebuild
        it, the doctor), naming the command that rebuilds it."""
        rebuild = f"`budget projections rebuild {self.projection.name}`"
        marks = await log_marks(conn, [self])
        await verify_log(js, stream, self.durable, marks, rebuild=rebuild)

    async def apply(
        self, conn: Connection, events: Sequence[Applied], *, isolating: bool
    ) -> list[tuple[Applied, str]]:
        """Apply the events; with ``isolating``, the ones it refuses, with the reason (else
        ``Unapplied`` when one may be to blame: the caller tries again, isolating)."""

        async def apply(batch: Sequence[Applied]) -> None:
            await self.projection.apply(conn, self.version, batch)

        return await apply_events(conn, events, apply, label=self.durable, isolating=isolating)


async def lock_checkpoints(conn: Connection, writers: Sequence[VersionWriter]) -> list[int]:
    """Each writer's checkpoint, locked for this transaction, in one statement; raises
    ``Retired`` once a newer version of one went live. FOR SHARE on the registry rows: a
    swap (FOR UPDATE) waits for this batch, and this batch waits for a swap, then sees it
    was retired."""
    try:
        cursor = await conn.execute(
            "SELECT c.name, r.active_version, c.stream_seq FROM projection_registry r"
            " JOIN projection_checkpoints c ON c.name = r.name"
            " JOIN unnest(%s::text[], %s::int[]) AS w(name, version)"
            "   ON w.name = c.name AND w.version = c.version"
            " ORDER BY c.name FOR SHARE OF r FOR UPDATE OF c",
            ([w.projection.name for w in writers], [w.version for w in writers]),
        )
        found = {name: (active, seq) for name, active, seq in await cursor.fetchall()}
    except psycopg.errors.UndefinedTable as exc:
        raise Retired(str(exc)) from exc
    positions = []
    for writer in writers:
        if writer.projection.name not in found:
            raise Retired(f"{writer.durable} was dropped: a newer version went live")
        active, seq = found[writer.projection.name]
        if int(active) > writer.version:
            raise Retired(f"{writer.durable} was replaced by version {active}")
        positions.append(int(seq))
    return positions


async def log_marks(conn: Connection, writers: Sequence[VersionWriter]) -> list[LogMark]:
    """Where each writer's checkpoint stands in the log."""
    cursor = await conn.execute(
        "SELECT c.name, c.version, c.stream_seq, c.message_digest FROM projection_checkpoints c"
        " JOIN unnest(%s::text[], %s::int[]) AS w(name, version)"
        "   ON w.name = c.name AND w.version = c.version",
        ([w.projection.name for w in writers], [w.version for w in writers]),
    )
    found = {
        (name, version): LogMark(int(seq), digest)
        for name, version, seq, digest in await cursor.fetchall()
    }
    marks = []
    for writer in writers:
        mark = found.get((writer.projection.name, writer.version))
        if mark is None:
            raise RuntimeError(f"projection {writer.durable} has no checkpoint row")
        marks.append(mark)
    return marks


Move = tuple[VersionWriter, int, Sequence[Applied]]
"""A writer, the stream sequence its checkpoint moves to, and the events it applied."""


async def advance(conn: Connection, moves: Sequence[Move], last: LogMark) -> None:
    """Move each writer's checkpoint to its stream sequence, counting what it applied, in
    one statement; a checkpoint moved to ``last.stream_seq`` (the batch's last message)
    takes its digest."""
    await conn.execute(
        "UPDATE projection_checkpoints c SET stream_seq = m.seq,"
        " events_applied = c.events_applied + m.applied,"
        " newest_event_at = GREATEST(c.newest_event_at, m.newest), updated_at = now(),"
        " message_digest = CASE WHEN m.seq = %s::bigint THEN %s::bytea ELSE c.message_digest END"
        " FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::bigint[], %s::timestamptz[])"
        "   AS m(name, version, seq, applied, newest)"
        " WHERE c.name = m.name AND c.version = m.version",
        (
            last.stream_seq,
            last.digest,
            [w.projection.name for w, _, _ in moves],
            [w.version for w, _, _ in moves],
            [seq for _, seq, _ in moves],
            [len(applied) for _, _, applied in moves],
            [max((a.occurred_at for a in applied), default=None) for _, _, applied in moves],
        ),
    )
