"""A rebuild's life beside the workers, on real NATS and PostgreSQL: on a database no
worker has used yet, beside a hot standby, against a newer rebuild, and when it fails."""

from __future__ import annotations

from nats.aio.client import Client

from events import Topology
from projections.db import connect
from projections.engine.checkpoints import create_version
from projections.engine.rebuild import rebuild
from projections.spend import SpendProjection

from support import catch_up, publish, rows, varied_events

SPEND_REQUESTS = "SELECT requests FROM spend_totals WHERE scope = 'global' AND period = 'monthly'"


async def test_a_rebuild_before_any_worker_ran_goes_live_and_workers_follow_it(
    nc: Client, db: str, topology: Topology
) -> None:
    events = varied_events(3)
    await publish(nc, topology, events[:2])

    version = await rebuild(SpendProjection(), nc=nc, database_url=db, topology=topology)

    assert await rows(db, "SELECT name, active_version FROM projection_registry") == [
        ("spend", version)
    ]
    assert await rows(db, SPEND_REQUESTS) == [(2,)]
    await publish(nc, topology, events[2:])
    await catch_up(SpendProjection(), nc, db, topology)  # what a worker opens
    assert await rows(db, SPEND_REQUESTS) == [(3,)]
    assert await rows(db, "SELECT version FROM projection_checkpoints") == [(version,)]


async def test_a_worker_starts_over_what_a_rebuild_on_a_fresh_database_left_before(
    nc: Client, db: str, topology: Topology
) -> None:
    """Earlier releases left a version without a registry row when a rebuild ran first;
    the worker that upgrades drops it rather than failing on its tables at every start."""
    await publish(nc, topology, varied_events(2))
    conn = await connect(db)
    try:
        await create_version(conn, SpendProjection(), 1, indexes=False)
    finally:
        await conn.close()

    await catch_up(SpendProjection(), nc, db, topology)

    assert await rows(db, SPEND_REQUESTS) == [(2,)]
