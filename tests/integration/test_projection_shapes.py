"""Upgrading, on real NATS and PostgreSQL: a worker whose release built a projection's
tables differently (an older release, or one before shapes were recorded) rebuilds it from
the log before applying anything, once however many workers start, and the rebuilt version
holds everything the log holds."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client

from events import BudgetPolicy, PolicySet, Topology, utc_now
from projections.db import connect
from projections.engine.checkpoints import ensure_projection
from projections.engine.projection import physical
from projections.engine.shapes import live_shape_is_current
from projections.policies import PoliciesProjection, load_policies
from services.worker import run_projection

from enforcement import stack_settings
from support import publish, wait_for

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
