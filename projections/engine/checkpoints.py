"""The registry of projection versions and their checkpoints (tracking records)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from projections.engine.projection import Connection, Projection, physical
from projections.engine.shapes import shape_of

__all__ = [
    "LIVE_POSITION_SQL",
    "Checkpoint",
    "create_indexes",
    "create_version",
    "drop_version",
    "ensure_projection",
    "list_checkpoints",
    "live_position",
    "point_views_at",
]


@dataclass(frozen=True)
class Checkpoint:
    name: str
    version: int
    active_version: int
    stream_seq: int
    events_applied: int
    newest_event_at: datetime | None


async def ensure_projection(conn: Connection, projection: Projection) -> int:
    """Create version 1 of a projection the first time; returns the active version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (projection.name,))
        row = await (
            await conn.execute(
                "SELECT active_version FROM projection_registry WHERE name = %s",
                (projection.name,),
            )
        ).fetchone()
        if row is not None:
            return int(row[0])
        # Versions without a registry row are what a rebuild on a fresh database left
        # before rebuilds made the row first (never live, never finished): in the way.
        left = await (
            await conn.execute(
                "SELECT version FROM projection_checkpoints WHERE name = %s", (projection.name,)
            )
        ).fetchall()
        for (version,) in left:
            await drop_version(conn, projection, int(version))
        await create_version(conn, projection, 1)
        await conn.execute(
            "INSERT INTO projection_registry (name, active_version) VALUES (%s, 1)",
            (projection.name,),
        )
        await point_views_at(conn, projection, 1)
        return 1


async def create_version(
    conn: Connection, projection: Projection, version: int, *, indexes: bool = True
) -> None:
    """The version's tables and its checkpoint row; its reader indexes too unless a
    rebuild builds them later (``create_indexes``)."""
    for statement in projection.ddl(version):
        await conn.execute(statement.encode())
    if indexes:
        await create_indexes(conn, projection, version)
    await conn.execute(
        "INSERT INTO projection_checkpoints (name, version, shape) VALUES (%s, %s, %s)"
        " ON CONFLICT DO NOTHING",
        (projection.name, version, shape_of(projection)),
    )


async def create_indexes(conn: Connection, projection: Projection, version: int) -> None:
    for statement in projection.indexes(version):
        await conn.execute(statement.encode())


async def point_views_at(conn: Connection, projection: Projection, version: int) -> None:
    for view, query in projection.views(version).items():
        await conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(view)))
        await conn.execute(
            sql.SQL("CREATE VIEW {} AS ").format(sql.Identifier(view)) + sql.SQL(query)
        )


async def drop_version(conn: Connection, projection: Projection, version: int) -> None:
    for table in projection.tables:
        await conn.execute(
            sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(physical(table, version)))
        )
    await conn.execute(
        "DELETE FROM projection_checkpoints WHERE name = %s AND version = %s",
        (projection.name, version),
    )


async def list_checkpoints(conn: Connection) -> list[Checkpoint]:
    cursor = await conn.execute(
        "SELECT c.name, c.version, r.active_version, c.stream_seq, c.events_applied,"
        " c.newest_event_at FROM projection_checkpoints c"
        " JOIN projection_registry r USING (name) ORDER BY c.name, c.version"
    )
    return [Checkpoint(*row) for row in await cursor.fetchall()]


LIVE_POSITION_SQL = (
    "SELECT coalesce(max(c.stream_seq), 0) FROM projection_checkpoints c"
    " JOIN projection_registry r ON r.name = c.name AND r.active_version = c.version"
    " WHERE c.name = %s"
)
"""The stream sequence the live version of projection ``%s`` has applied up to."""


async def live_position(conn: Connection, name: str) -> int:
    """The stream sequence the live version of projection ``name`` has applied up to."""
    row = await (await conn.execute(LIVE_POSITION_SQL, (name,))).fetchone()
    assert row is not None
    return int(row[0])
