"""Rebuild a projection from sequence 1 into a new version, beside the live one, and swap
atomically once caught up. The live worker keeps serving until the swap, then follows it.

Nothing reads the new version before its swap, so its reader indexes
(``Projection.indexes``) are built once it has caught up, not maintained row by row."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from events import Topology
from projections.db import connect
from projections.engine.checkpoints import (
    create_indexes,
    create_version,
    drop_version,
    ensure_projection,
    live_position,
    point_views_at,
)
from projections.engine.log import require_stream
from projections.engine.projection import Connection, Projection
from projections.engine.reader import ConsumerGone
from projections.engine.runner import (
    BatchResult,
    EngineConfig,
    ProjectionRunner,
    Reconnected,
    Retired,
    consumer_name,
)
from projections.engine.shapes import live_shape_is_current
from projections.engine.writer import VersionWriter

__all__ = ["Progress", "rebuild", "rebuild_if_reshaped"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    done: int
    total: int


async def rebuild(
    projection: Projection,
    *,
    nc: Client,
    database_url: str,
    topology: Topology,
    on_progress: Callable[[Progress], None] | None = None,
    swap: bool = True,
    config: EngineConfig | None = None,
) -> int:
    """Build the next version from the whole log; with ``swap``, make it live and drop
    the old one. Returns the new version number. A rebuild that fails drops its version
    (no rebuild resumes another's); one on a log without its stream raises ``LogError``
    before making a version."""
    js = nc.jetstream()
    await require_stream(js, topology.event_stream)
    conn = await connect(database_url)
    try:
        version = await _new_version(conn, projection)
        runner = ProjectionRunner(
            projection,
            nc=nc,
            database_url=database_url,
            topology=topology,
            version=version,
            config=config,
        )
        try:
            await _build(runner, on_progress, swap=swap, js=js, stream=topology.event_stream.name)
        except BaseException as exc:
            live = await _abandon(conn, projection, version, js, topology)
            # What a newer rebuild's swap does to this one: it drops the version, or it
            # went live before this one's swap.
            if isinstance(exc, Retired | ConsumerGone) and live is not None and live > version:
                raise Retired(
                    f"another rebuild ({consumer_name(projection, live)}) went live first;"
                    f" this one ({runner.durable}) stopped and left nothing behind"
                ) from exc
            raise
        if swap:
            await _drop_older(conn, projection, version, js, topology)
        return version
    finally:
        await conn.close()


async def rebuild_if_reshaped(
    projection: Projection,
    *,
    nc: Client,
    database_url: str,
    topology: Topology,
    config: EngineConfig | None = None,
) -> int | None:
    """Rebuild ``projection`` when its live version was built by another release's DDL
    (``projections.engine.shapes``); returns the new version, or None when it is current. The
    workers of one projection take turns here, so it is rebuilt once."""
    conn = await connect(database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"reshape:{projection.name}",))
        # Read under the lock: a worker that rebuilt meanwhile swapped in another version.
        live = await ensure_projection(conn, projection)
        if await live_shape_is_current(conn, projection):
            return None
        # Rebuilt from another log, the live version's history would go with the swap.
        writer = VersionWriter(projection, live)
        await writer.verify_log(conn, nc.jetstream(), topology.event_stream.name)
        log.warning(
            "projection %s: its live tables were built by another release; rebuilding it"
            " from the log (reads show the old version until the swap)",
            projection.name,
        )
        return await rebuild(
            projection, nc=nc, database_url=database_url, topology=topology, config=config
        )
    finally:
        await conn.close()  # and with it the advisory lock


async def _new_version(conn: Connection, projection: Projection) -> int:
    """The next version's tables (without their reader indexes) and checkpoint."""
    # The registry row first (version 1 on a fresh database): the swap updates it, and
    # every batch of the new version reads it.
    await ensure_projection(conn, projection)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (projection.name,))
        row = await (
            await conn.execute(
                "SELECT max(version) FROM projection_checkpoints WHERE name = %s",
                (projection.name,),
            )
        ).fetchone()
        assert row is not None
        version = int(row[0]) + 1
        await create_version(conn, projection, version, indexes=False)
    return version


async def _build(
    runner: ProjectionRunner,
    on_progress: Callable[[Progress], None] | None,
    *,
    swap: bool,
    js: JetStreamContext,
    stream: str,
) -> None:
    """Catch the runner's version up with the log, build its reader indexes and, with
    ``swap``, make it live."""
    try:
        await runner.open()
        await _catch_up(runner, on_progress)
        # Built once, from the rows caught up; the swap's few batches maintain them.
        await create_indexes(runner.connection, runner.projection, runner.version)
        while swap:
            try:
                await _swap(runner, js, stream)
                break
            except Reconnected as exc:  # rolled back: read again from the checkpoint
                log.warning("%s; resuming before the swap", exc)
                await runner.resume()
                await runner.catch_up()
    finally:
        await runner.close()


async def _catch_up(
    runner: ProjectionRunner, on_progress: Callable[[Progress], None] | None
) -> None:
    total = await runner.pending()
    done = 0

    def progress(result: BatchResult) -> None:
        nonlocal done
        done += result.applied + result.skipped + result.dead_lettered
        if on_progress is not None:
            on_progress(Progress(done, max(total, done)))

    await runner.catch_up(progress)


async def _swap(runner: ProjectionRunner, js: JetStreamContext, stream: str) -> None:
    """Lock the registry row (the live worker's next batch waits), drain what arrived
    since, point the views at the new version, hand the projection the events the old
    version never applied (``went_live``), commit; then ack. A NATS reconnect meanwhile
    raises ``Reconnected`` (rolled back: deliveries may have been lost in flight)."""
    conn = runner.connection
    assert runner.reader is not None
    last = None
    async with conn.transaction():
        row = await (
            await conn.execute(
                "SELECT active_version FROM projection_registry WHERE name = %s FOR UPDATE",
                (runner.projection.name,),
            )
        ).fetchone()
        if row is not None and int(row[0]) >= runner.version:
            # Another rebuild (a worker's after an upgrade, or a second CLI run) went live
            # first: never swap an older version back over it.
            raise Retired(f"{runner.durable}: version {row[0]} went live meanwhile")
        replaced_through = await live_position(conn, runner.projection.name)
        while True:
            batch = await runner.take(runner.config.batch_size, 0, wait=0.05, await_writers=False)
            if batch:
                last = (await runner.process(batch)).last
            elif await _drained(runner, js, stream):
                break
        await conn.execute(
            "UPDATE projection_registry SET active_version = %s, updated_at = now()"
            " WHERE name = %s",
            (runner.version, runner.projection.name),
        )
        await point_views_at(conn, runner.projection, runner.version)
        await runner.projection.went_live(conn, runner.version, after_seq=replaced_through)
    if last is not None:
        await runner.reader.ack_through(last)
    log.info("%s is live", runner.durable)


async def _drained(runner: ProjectionRunner, js: JetStreamContext, stream: str) -> bool:
    """Everything this version's consumer has delivered is applied, in this transaction or
    before it, and nothing is left to deliver. (Not ``pending()``: what the swap applies is
    acked only once it commits, so it stays unacked while the swap waits for it.)"""
    assert runner.reader is not None
    if runner.reader.buffered:
        return False
    info = await js.consumer_info(stream, runner.durable)
    cursor = await runner.connection.execute(
        "SELECT stream_seq FROM projection_checkpoints WHERE name = %s AND version = %s",
        (runner.projection.name, runner.version),
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(info.num_pending or 0) == 0 and int(info.delivered.stream_seq) <= int(row[0])


async def _drop_older(
    conn: Connection, projection: Projection, version: int, js: JetStreamContext, topology: Topology
) -> None:
    rows = await (
        await conn.execute(
            "SELECT version FROM projection_checkpoints WHERE name = %s AND version < %s",
            (projection.name, version),
        )
    ).fetchall()
    for (old,) in rows:
        await _drop(conn, projection, int(old), js, topology)


async def _abandon(
    conn: Connection, projection: Projection, version: int, js: JetStreamContext, topology: Topology
) -> int | None:
    """Drop ``version`` of a rebuild that failed, unless its swap went through; the live
    version. When the database or NATS fails this too, None: the version stays (shown as
    building) until another rebuild goes live and drops it with the older ones."""
    try:
        row = await (
            await conn.execute(
                "SELECT active_version FROM projection_registry WHERE name = %s",
                (projection.name,),
            )
        ).fetchone()
        assert row is not None  # made before the version
        live = int(row[0])
        if live != version:
            await _drop(conn, projection, version, js, topology)
        return live
    except (psycopg.Error, NatsError, OSError) as exc:
        log.warning(
            "could not drop %s after it failed: %s", consumer_name(projection, version), exc
        )
        return None


async def _drop(
    conn: Connection, projection: Projection, version: int, js: JetStreamContext, topology: Topology
) -> None:
    """Drop ``version``'s tables, checkpoint and consumer."""
    async with conn.transaction():
        await drop_version(conn, projection, version)
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(topology.event_stream.name, consumer_name(projection, version))
    log.info("dropped %s", consumer_name(projection, version))
