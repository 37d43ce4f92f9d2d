"""A service's health is its loops turning, not its process being up: an enforcer whose
decision loop is stalled (a lock it waits for) or stopped says so in every answer and in
its heartbeat, at once, instead of leaving checks to time out; healthy again, it decides.
A worker stuck on one batch, or retrying a database it cannot reach, is reported the same
way."""

from __future__ import annotations

import asyncio
import functools
import logging
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client

from budget.rpc import ServiceUnavailable, ask
from events import BudgetScope, Topology
from events.rpc import RPC_CHECK, RPC_SNAPSHOT, CallAttributes, CheckRequest, CheckResult, Snapshot
from projections.db import connect
from services.embedded import EmbeddedPostgres
from services.enforcer import EnforcerConfig
from services.liveness import Liveness, heartbeat
from services.ops import prepare
from services.worker import run_projection

from enforcement import EnforcementStack, enforcement_stack, stack_settings
from support import publish, rows, usage_event, wait_for

pytestmark = pytest.mark.integration
WITHIN = 5.0


def check(user: str) -> CheckRequest:
    return CheckRequest(model="gpt-4o", user_id=user, estimated_cost=Decimal("0.10"))


async def refusal(stack: EnforcementStack, subject: str, request: CheckRequest) -> str:
    """What the enforcer answers instead of a decision (fails if it decides)."""
    with pytest.raises(ServiceUnavailable) as refused:
        await ask(stack.nc, subject, request, CheckResult, within=WITHIN)
    return str(refused.value)


async def test_a_stalled_decision_loop_is_reported_and_recovers(
    nc: Client,
    nats_url: str,
    db: str,
    topology: Topology,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    async with enforcement_stack(nc, settings, EnforcerConfig(stall_after=0.5)) as stack:
        assert stack.enforcer is not None
        await stack.set_policy(scope=BudgetScope.USER, limit_amount="1", action="block")
        rpc = functools.partial(settings.topology.rpc_subject, caller=settings.caller)
        beat = tmp_path / "heartbeat"
        stop = asyncio.Event()
        beating = asyncio.create_task(heartbeat(beat, stop, stack.enforcer.liveness, every=0.05))
        blocker = await connect(db)
        try:
            await blocker.execute("BEGIN")
            await blocker.execute("LOCK TABLE reservation_holds IN ACCESS EXCLUSIVE MODE")
            stuck = asyncio.create_task(ask(nc, rpc(RPC_CHECK), check("a"), CheckResult, within=60))

            async def reported() -> bool:
                """the heartbeat reports the stall"""
                return "enforcer decision loop stalled" in caplog.text

            with caplog.at_level(logging.ERROR, logger="services.liveness"):
                await wait_for(reported, within=WITHIN)
            assert "enforcer: not healthy: enforcer decision loop stalled" in await refusal(
                stack, rpc(RPC_CHECK), check("b")
            )
            beat.unlink(missing_ok=True)
            await blocker.execute("ROLLBACK")
            assert (await stuck).allowed

            async def beats_again() -> bool:
                """the heartbeat file is touched again"""
                return beat.exists()

            await wait_for(beats_again, within=WITHIN)
            answer = await ask(nc, rpc(RPC_CHECK), check("b"), CheckResult, within=WITHIN)
            assert answer.allowed and answer.enforced
        finally:
            await blocker.close()
            stop.set()
            await beating


async def test_a_stopped_decision_loop_refuses_at_once_and_fails_the_health_probe(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    async with enforcement_stack(nc, settings) as stack:
        assert stack.enforcer is not None
        rpc = functools.partial(settings.topology.rpc_subject, caller=settings.caller)
        await ask(nc, rpc(RPC_SNAPSHOT), CallAttributes(model="health"), Snapshot, within=WITHIN)
        assert stack.enforcer._loop_task is not None
        stack.enforcer._loop_task.cancel()
        await asyncio.gather(stack.enforcer._loop_task, return_exceptions=True)
        assert stack.enforcer.liveness.problems() == ["enforcer decision loop stopped"]
        # what /api/v1/services and the trackers' snapshots ask
        with pytest.raises(ServiceUnavailable, match="not healthy: enforcer decision loop stopped"):
            await ask(nc, rpc(RPC_SNAPSHOT), CallAttributes(model="x"), Snapshot, within=WITHIN)
        assert "decision loop stopped" in await refusal(stack, rpc(RPC_CHECK), check("c"))


async def test_a_worker_stuck_on_one_batch_is_reported_until_it_moves_again(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    await prepare(nats_url, db, settings)
    liveness = Liveness()
    loop = liveness.loop("worker spend", stall_after=0.5)
    stop = asyncio.Event()
    worker = loop.start(run_projection("spend", nc, settings, stop, loop))
    blocker = await connect(db)

    async def spent(amount: str) -> bool:
        found = await rows(db, "SELECT sum(cost) FROM spend_buckets WHERE scope_key = 'stuck'")
        return found == [(Decimal(amount),)]

    try:
        await publish(nc, topology, [usage_event(cost="1.00", user="stuck")])

        async def running() -> bool:
            """the worker applied the first event"""
            return await spent("1.00")

        await wait_for(running, within=WITHIN)
        await blocker.execute("BEGIN")
        await blocker.execute("LOCK TABLE projection_checkpoints IN ACCESS EXCLUSIVE MODE")
        await publish(nc, topology, [usage_event(cost="0.25", user="stuck")])

        async def stalled() -> bool:
            """the worker is reported stalled on its batch"""
            return [p.split(":")[0] for p in liveness.problems()] == ["worker spend stalled"]

        await wait_for(stalled, within=WITHIN)
        await blocker.execute("ROLLBACK")

        async def applied() -> bool:
            """the batch went through and the worker is healthy again"""
            return await spent("1.25") and liveness.problems() == []

        await wait_for(applied, within=WITHIN)
    finally:
        await blocker.close()
        stop.set()
        await worker


async def test_a_worker_retrying_a_database_it_cannot_reach_is_reported_until_it_applies(
    nc: Client,
    nats_url: str,
    topology: Topology,
    tmp_path: Path,
    embedded_postgres: EmbeddedPostgres,
) -> None:
    db = embedded_postgres.url
    settings = stack_settings(nats_url, db, topology, tmp_path)
    await prepare(nats_url, db, settings)
    liveness = Liveness()
    loop = liveness.loop("worker spend", stall_after=1.0)
    stop = asyncio.Event()
    worker = loop.start(run_projection("spend", nc, settings, stop, loop))

    async def spent(amount: str) -> bool:
        found = await rows(db, "SELECT sum(cost) FROM spend_buckets WHERE scope_key = 'cut'")
        return found == [(Decimal(amount),)]

    try:
        await publish(nc, topology, [usage_event(cost="1.00", user="cut")])

        async def running() -> bool:
            """the worker applied the first event"""
            return await spent("1.00")

        await wait_for(running, within=WITHIN)
        embedded_postgres.stop()
        await publish(nc, topology, [usage_event(cost="0.25", user="cut")])

        async def failing() -> bool:
            """the worker, backing off and retrying, is reported stalled"""
            problems = liveness.problems()
            return len(problems) == 1 and problems[0].startswith("worker spend stalled: failing")

        await wait_for(failing, within=3 * WITHIN)
        embedded_postgres.start()

        async def applied() -> bool:
            """the database is back, the batch went through and the worker is healthy"""
            return await spent("1.25") and liveness.problems() == []

        await wait_for(applied, within=6 * WITHIN)
    finally:
        stop.set()
        await worker
