"""Upgrading, on real NATS and PostgreSQL: a worker whose release built a projection's
tables differently (an older release, or one before shapes were recorded) rebuilds it from
the log before applying anything, once however many workers start, and the rebuilt version
holds everything the log holds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from events import BudgetPolicy, PolicySet, Topology, utc_now
from projections.db import connect
from projections.engine.checkpoints import ensure_projection
from projections.engine.projection import physical
from projections.engine.runner import group_consumer_name
from projections.engine.shapes import live_shape_is_current
from projections.history import HistoryProjection
from projections.policies import PoliciesProjection, load_policies
from projections.registry import worker_projections
from projections.reports import ReportsProjection
from projections.spend import SpendProjection
from services.worker import run_projection

from enforcement import stack_settings
from support import publish, usage_event, wait_for

pytestmark = pytest.mark.integration


def cap(policy_id: str) -> BudgetPolicy:
    return BudgetPolicy(policy_id=policy_id, name=policy_id, limit_amount=Decimal(5))


async def test_a_worker_rebuilds_a_projection_built_by_another_release_once(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    projection = PoliciesProjection()
    conn = await connect(db)
    try:
        await ensure_projection(conn, projection)
        assert await live_shape_is_current(conn, projection)
        # What a release before this one left: no recorded shape, one table missing.
        await conn.execute("UPDATE projection_checkpoints SET shape = NULL")
        await conn.execute(f"DROP TABLE {physical(projection.tables[0], 1)} CASCADE".encode())
        await publish(nc, topology, [PolicySet(occurred_at=utc_now(), policy=cap("before"))])

        settings = stack_settings(nats_url, db, topology, tmp_path)
        stop = asyncio.Event()
        workers = [
            asyncio.create_task(run_projection("policies", nc, settings, stop)) for _ in range(2)
        ]
        try:

            async def rebuilt() -> bool:
                """the policies projection is live in a version of the current shape"""
                return await live_shape_is_current(conn, projection)

            await wait_for(rebuilt)
            await publish(nc, topology, [PolicySet(occurred_at=utc_now(), policy=cap("after"))])
            row = await (
                await conn.execute(
                    "SELECT active_version FROM projection_registry WHERE name = 'policies'"
                )
            ).fetchone()
            assert row is not None
            live = physical("budget_policy_log", int(row[0]))

            async def both_applied() -> bool:
                """the rebuilt version holds the policy set before and the one set after"""
                return {p.policy_id for p in await load_policies(conn, live)} == {
                    "before",
                    "after",
                }

            await wait_for(both_applied)
        finally:
            stop.set()
            await asyncio.gather(*workers)
        versions = await (
            await conn.execute(
                "SELECT version FROM projection_checkpoints WHERE name = 'policies'"
                " ORDER BY version"
            )
        ).fetchall()
        assert versions == [(2,)], "two workers rebuilt it once, and the old version is gone"
    finally:
        await conn.close()


async def test_a_group_worker_runs_its_other_members_while_it_rebuilds_a_reshaped_one(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    """An upgrade that reshapes the history alone: spend and the report rollups go on
    applying events (checks count on spend) for as long as the history's rebuild takes,
    and once it is live every event counts once in each."""
    conn = await connect(db)
    held = await connect(db)
    try:
        for projection in worker_projections("usage"):
            await ensure_projection(conn, projection)
        await conn.execute(
            "UPDATE projection_checkpoints SET shape = 'older' WHERE name = 'history'"
        )
        # The rebuild waits for this lock (the reshape turn workers take) until released.
        await held.execute("SELECT pg_advisory_lock(hashtext('reshape:history'))")
        await publish(nc, topology, [usage_event()])

        settings = stack_settings(nats_url, db, topology, tmp_path)
        stop = asyncio.Event()
        worker = asyncio.create_task(run_projection("usage", nc, settings, stop))
        try:

            def applied(name: str, count: int) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    row = await (
                        await conn.execute(
                            "SELECT c.events_applied FROM projection_checkpoints c JOIN"
                            " projection_registry r ON r.name = c.name AND r.active_version ="
                            " c.version WHERE c.name = %s",
                            (name,),
                        )
                    ).fetchone()
                    return row is not None and row[0] == count

                check.__doc__ = f"the live {name} version applied {count} event(s)"
                return check

            await wait_for(applied("spend", 1))
            await wait_for(applied("reports", 1))
            assert not await live_shape_is_current(conn, HistoryProjection())

            await held.execute("SELECT pg_advisory_unlock(hashtext('reshape:history'))")
            await wait_for(lambda: live_shape_is_current(conn, HistoryProjection()))
            await publish(nc, topology, [usage_event()])
            for name in ("spend", "reports", "history"):
                await wait_for(applied(name, 2))
        finally:
            stop.set()
            await held.close()  # a worker still waiting for the lock stops too
            await worker
        spent = await (await conn.execute("SELECT count(*) FROM usage_history")).fetchone()
        assert spent == (2,)
        with pytest.raises(NotFoundError):  # what ran the others meanwhile left nothing
            await nc.jetstream().consumer_info(
                topology.event_stream.name,
                group_consumer_name([SpendProjection(), ReportsProjection()]),
            )
    finally:
        await held.close()
        await conn.close()


async def test_a_worker_waiting_for_another_ones_rebuild_stops_when_asked(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    """While one worker rebuilds a reshaped projection, another of it waits in PostgreSQL
    for its turn: a stop (SIGTERM) reaches it there, not after the whole rebuild."""
    conn = await connect(db)
    held = await connect(db)
    try:
        await ensure_projection(conn, PoliciesProjection())
        await conn.execute(
            "UPDATE projection_checkpoints SET shape = 'older' WHERE name = 'policies'"
        )
        await held.execute("SELECT pg_advisory_lock(hashtext('reshape:policies'))")
        stop = asyncio.Event()
        settings = stack_settings(nats_url, db, topology, tmp_path)
        worker = asyncio.create_task(run_projection("policies", nc, settings, stop))

        async def waiting_for_its_turn() -> bool:
            """the worker waits for the rebuild's advisory lock"""
            row = await (
                await conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                )
            ).fetchone()
            return row == (1,)

        await wait_for(waiting_for_its_turn)
        stop.set()
        await asyncio.wait_for(worker, 30)  # the lock still held by "the other worker"
        assert not await waiting_for_its_turn()
    finally:
        await held.close()
        await conn.close()
