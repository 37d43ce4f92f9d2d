"""Fault tests: kill things, restart them, and check that nothing was lost or counted twice."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
from collections import Counter
from decimal import Decimal
from pathlib import Path

import nats
import psycopg
import pytest
from nats.aio.client import Client

from budget.alerting import DEFAULT_RULES
from events import BudgetPolicy, PolicySet, Topology
from events.rpc import RPC_RELEASE, RPC_SNAPSHOT
from projections.alerts import AlertsProjection
from projections.db import connect
from projections.engine.checkpoints import ensure_projection
from projections.engine.rebuild import rebuild
from projections.engine.runner import BatchResult, EngineConfig, ProjectionRunner
from projections.migrate import migrate
from projections.registry import worker_projections
from projections.spend import SpendProjection
from services.embedded import EmbeddedNats, EmbeddedPostgres

from enforcement import enforcement_stack, stack_settings
from producing import publisher_for, stored_event_ids, stored_once_resent
from support import (
    ANY_TIME,
    budget_process,
    catch_up,
    publish,
    rows,
    varied_events,
    wait_for,
)

EVENTS = 20_000


async def checkpoint(db: str, names: tuple[str, ...] = ("spend",)) -> int:
    """The lowest checkpoint of the projections ``names``."""
    found = await rows(
        db,
        "SELECT min(stream_seq) FROM projection_checkpoints WHERE name = ANY(%s)",
        (list(names),),
    )
    return int(found[0][0] or 0)


@pytest.mark.parametrize("worker_name", ["spend", "usage"])
async def test_worker_killed_mid_batch_and_restarted_leaves_totals_exact(
    nc: Client, db: str, topology: Topology, nats_url: str, worker_name: str
) -> None:
    events = varied_events(EVENTS)
    await publish(nc, topology, events)
    projections = worker_projections(worker_name)
    names = tuple(p.name for p in projections)
    conn = await connect(db)
    for projection in projections:
        await ensure_projection(conn, projection)
    await conn.close()

    def start_worker() -> subprocess.Popen[bytes]:
        return budget_process(
            ["worker", worker_name], nats_url=nats_url, database_url=db, topology=topology
        )

    kills = 0
    for fraction in (0.2, 0.6):
        worker = start_worker()

        async def past(target: int = int(EVENTS * fraction)) -> bool:
            """the worker got past the kill point"""
            return await checkpoint(db, names) >= target

        await wait_for(past, within=60, interval=0.005)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        kills += 1
        assert await checkpoint(db, names) < EVENTS, "killed too late to be mid-stream"

    worker = start_worker()
    try:

        async def done() -> bool:
            """the restarted worker committed the whole log"""
            return await checkpoint(db, names) == EVENTS

        await wait_for(done, within=120)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0

    expected_cost = sum((e.cost for e in events if e.cost is not None), Decimal(0))
    unpriced = sum(1 for e in events if e.cost is None)
    assert kills == 2
    assert await rows(
        db,
        "SELECT sum(requests), sum(cost), sum(unpriced_requests) FROM spend_totals"
        " WHERE scope = 'global' AND period = 'monthly'",
    ) == [(EVENTS, expected_cost, unpriced)]
    assert await rows(db, "SELECT count(*) FROM spend_ledger") == [(EVENTS,)]
    if worker_name == "usage":
        assert await rows(db, "SELECT count(*), sum(cost) FROM usage_history") == [
            (EVENTS, expected_cost)
        ]
        assert await rows(
            db,
            "SELECT sum(requests), sum(cost), sum(unpriced_requests) FROM report_daily"
            " WHERE dimension = 'total'",
        ) == [(EVENTS, expected_cost, unpriced)]


async def test_spooled_events_survive_nats_outage_and_are_stored_once(
    embedded_nats: EmbeddedNats, private_log: Topology, tmp_path: Path
) -> None:
    events = varied_events(300)
    publisher = publisher_for(embedded_nats.url, private_log, tmp_path / "spool")
    await publisher.start()
    for event in events[:100]:
        await publisher.publish(event)
    await publisher.flush()

    embedded_nats.kill()
    for event in events[100:200]:
        await publisher.publish(event)
    await publisher.flush()
    assert len(publisher.spool) == 100

    embedded_nats.start()

    async def spool_empty() -> bool:
        """the reconnected publisher re-sent the spool"""
        return len(publisher.spool) == 0

    await wait_for(spool_empty, within=30)
    for event in events[200:]:
        await publisher.publish(event)
    await publisher.close()

    stored = await stored_event_ids(embedded_nats.url, private_log)
    assert sorted(stored) == sorted(str(e.event_id) for e in events)


async def test_events_one_per_loop_turn_with_the_writer_cancelled_are_all_stored_once(
    embedded_nats: EmbeddedNats, private_log: Topology, tmp_path: Path
) -> None:
    """Events handed over one per turn of the loop share writes; a writer cancelled while
    it lingers (say by a host cancelling its tasks) leaves its events to the next one."""
    events = varied_events(200)
    publisher = publisher_for(embedded_nats.url, private_log, tmp_path / "spool")
    await publisher.start()
    for n, event in enumerate(events):
        await publisher.publish(event)
        if n == 100:
            writer = publisher._writer
            assert writer is not None
            writer.cancel()
        await asyncio.sleep(0)
    await publisher.flush()
    assert len(publisher.spool) == 0
    await publisher.close()
    stored = await stored_event_ids(embedded_nats.url, private_log)
    assert sorted(stored) == sorted(str(e.event_id) for e in events)


async def test_offered_events_are_taken_while_there_is_room_and_spooled_while_nats_is_down(
    embedded_nats: EmbeddedNats, private_log: Topology, tmp_path: Path
) -> None:
    """``offer`` (an instrumented call's publish, without a task) takes events while the
    pipeline has room and says no once it is full (the caller then awaits ``publish``);
    while NATS is down it spools them, as ``publish`` does. Each is stored once."""
    events = varied_events(30)
    publisher = publisher_for(embedded_nats.url, private_log, tmp_path / "spool", max_in_flight=10)
    await publisher.start()
    offered = [publisher.offer(event) for event in events[:20]]
    assert offered == [True] * 10 + [False] * 10
    for event in events[10:20]:
        await publisher.publish(event)
    await publisher.flush()

    embedded_nats.kill()

    async def disconnected() -> bool:
        """the publisher saw NATS go"""
        return not publisher.connected

    await wait_for(disconnected, within=30)
    assert all(publisher.offer(event) for event in events[20:])
    await publisher.flush()
    assert len(publisher.spool) == 10
    embedded_nats.start()

    stored = await stored_once_resent(publisher, embedded_nats.url, private_log)
    assert stored == sorted(str(e.event_id) for e in events)


class Resumed(SpendProjection):
    name = "resumed"

    def __init__(self) -> None:
        super().__init__("resumed", settles_reservations=False)


async def test_a_catch_up_resumes_from_its_checkpoint_when_nats_restarts(
    embedded_nats: EmbeddedNats, private_log: Topology, db: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A rebuild's catch-up (``ProjectionRunner.catch_up``) rides out a NATS restart: it
    reads again right after its checkpoint (deliveries may have been lost in flight) and
    goes on, rather than failing and starting the rebuild over. Every event counted once."""
    events = varied_events(3000)
    client = await nats.connect(embedded_nats.url, reconnect_time_wait=0.2)
    await publish(client, private_log, events)
    runner = ProjectionRunner(
        Resumed(),
        nc=client,
        database_url=db,
        topology=private_log,
        # Pulls of one batch: the next is in flight when NATS goes, and is lost with it.
        config=EngineConfig(time_bounds=ANY_TIME, batch_size=250, request_batch=250),
    )
    await runner.open()
    restarts = []

    def restart_nats_once(result: BatchResult) -> None:
        if not restarts:
            restarts.append(result.last.stream_seq)
            embedded_nats.kill()
            embedded_nats.start()

    try:
        with caplog.at_level(logging.WARNING, logger="projections.engine.runner"):
            await runner.catch_up(restart_nats_once)
    finally:
        await runner.close()
        await client.close()
    assert restarts and client.stats["reconnects"] >= 1
    assert any(r.getMessage().endswith("; resuming") for r in caplog.records)
    totals = await rows(db, "SELECT sum(requests) FROM resumed_buckets WHERE scope = 'global'")
    assert totals == [(len(events),)]


async def test_spool_written_while_nats_was_down_is_sent_by_the_next_process(
    embedded_nats: EmbeddedNats, private_log: Topology, tmp_path: Path
) -> None:
    events = varied_events(50)
    embedded_nats.kill()
    offline = publisher_for(embedded_nats.url, private_log, tmp_path / "spool")
    await offline.start()
    assert not offline.connected
    for event in events:
        await offline.publish(event)
    await offline.close()  # the process ends with its events only in the spool

    embedded_nats.start()
    # Sent at start, not after flush_interval (the default, 300 s).
    online = publisher_for(embedded_nats.url, private_log, tmp_path / "spool", flush_interval=300)
    await online.start()

    stored = await stored_once_resent(online, embedded_nats.url, private_log)
    assert stored == sorted(str(e.event_id) for e in events)


async def test_resent_events_are_counted_once_by_the_projection(
    embedded_nats: EmbeddedNats, private_log: Topology, pg_schema_url: str, tmp_path: Path
) -> None:
    """A re-send after JetStream's duplicate window stores a second copy; spend counts one."""
    events = varied_events(40)
    client = await nats.connect(embedded_nats.url)
    await publish(client, private_log, events, msg_id=False)
    await publish(client, private_log, events[:10], msg_id=False)
    migrate(pg_schema_url)
    await catch_up(SpendProjection(), client, pg_schema_url, private_log)
    await client.close()
    per_month = Counter(e.occurred_at.date().replace(day=1) for e in events)
    assert await rows(
        pg_schema_url,
        "SELECT period_start, requests FROM spend_totals"
        " WHERE scope = 'global' AND period = 'monthly' ORDER BY period_start",
    ) == sorted(per_month.items())


async def test_postgres_crash_mid_stream_loses_and_doubles_nothing(
    nc: Client, topology: Topology, nats_url: str, embedded_postgres: EmbeddedPostgres
) -> None:
    db = embedded_postgres.url
    migrate(db)
    events = varied_events(EVENTS)
    await publish(nc, topology, events)
    worker = budget_process(
        ["worker", "spend"], nats_url=nats_url, database_url=db, topology=topology
    )
    try:

        async def started() -> bool:
            """the worker committed its first batches"""
            return await checkpoint(db) > EVENTS // 10

        await wait_for(started, within=60, interval=0.005)
        embedded_postgres.restart(immediate=True)  # as after a power cut: crash recovery
        assert await checkpoint(db) < EVENTS, "the crash should come mid-stream"

        async def done() -> bool:
            """the worker rode out the crash and committed the whole log"""
            try:
                return await checkpoint(db) == EVENTS
            except psycopg.OperationalError:
                return False  # still recovering

        await wait_for(done, within=120, interval=0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    assert await rows(
        db,
        "SELECT sum(requests), sum(cost) FROM spend_totals"
        " WHERE scope = 'global' AND period = 'monthly'",
    ) == [(EVENTS, sum((e.cost for e in events if e.cost is not None), Decimal(0)))]


async def test_standby_worker_takes_over_when_the_active_one_is_killed(
    nc: Client, db: str, topology: Topology, nats_url: str
) -> None:
    events = varied_events(2000)
    await publish(nc, topology, events[:1000])
    conn = await connect(db)
    await ensure_projection(conn, SpendProjection())
    await conn.close()

    def start_worker() -> subprocess.Popen[bytes]:
        return budget_process(
            ["worker", "spend"], nats_url=nats_url, database_url=db, topology=topology
        )

    active = start_worker()

    async def first_half() -> bool:
        """the active worker committed the first half"""
        return await checkpoint(db) == 1000

    await wait_for(first_half, within=60)
    standby = start_worker()
    try:
        active.send_signal(signal.SIGKILL)
        active.wait()
        await publish(nc, topology, events[1000:])

        async def all_of_it() -> bool:
            """the standby took over and committed the second half"""
            return await checkpoint(db) == 2000

        await wait_for(all_of_it, within=60)
    finally:
        standby.send_signal(signal.SIGTERM)
        assert standby.wait(timeout=30) == 0
    assert await rows(
        db,
        "SELECT sum(requests) FROM spend_totals WHERE scope = 'global' AND period = 'monthly'",
    ) == [(2000,)]


async def test_alert_worker_killed_mid_stream_raises_and_queues_each_alert_once(
    nc: Client, db: str, topology: Topology, nats_url: str
) -> None:
    """Killed between commits and acks twice: every alert a clean replay derives is raised
    once and queued once per channel, none more."""
    start = varied_events(1)[0].occurred_at
    policies = [
        BudgetPolicy(policy_id="all", name="All", limit_amount=Decimal(10)),
        BudgetPolicy(policy_id="each", name="Each user", scope="user", limit_amount=1),
    ]
    events = varied_events(10_000)
    await publish(nc, topology, [PolicySet(occurred_at=start, policy=p) for p in policies])
    await publish(nc, topology, events)
    total = len(events) + len(policies)
    conn = await connect(db)
    await ensure_projection(conn, AlertsProjection())
    await conn.close()

    async def alerts_checkpoint() -> int:
        found = await rows(
            db, "SELECT stream_seq FROM projection_checkpoints WHERE name = 'alerts'"
        )
        return int(found[0][0]) if found else 0

    for fraction in (0.2, 0.6):
        worker = budget_process(
            ["worker", "alerts"], nats_url=nats_url, database_url=db, topology=topology
        )

        async def past(target: int = int(total * fraction)) -> bool:
            """the worker got past the kill point"""
            return await alerts_checkpoint() >= target

        await wait_for(past, within=60, interval=0.005)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        assert await alerts_checkpoint() < total, "killed too late to be mid-stream"
    worker = budget_process(
        ["worker", "alerts"], nats_url=nats_url, database_url=db, topology=topology
    )
    try:

        async def done() -> bool:
            """the restarted worker committed the whole log"""
            return await alerts_checkpoint() == total

        await wait_for(done, within=120)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0

    await rebuild(AlertsProjection(), nc=nc, database_url=db, topology=topology, swap=False)
    live = await rows(db, "SELECT alert_id, alert FROM alerts_v1 ORDER BY alert_id")
    assert live == await rows(db, "SELECT alert_id, alert FROM alerts_v2 ORDER BY alert_id")
    assert len(live) > 20  # the global policy's three and many users' thresholds
    channels = len(DEFAULT_RULES[0].channels)
    queued = await rows(db, "SELECT alert_id, count(*) FROM alert_outbox GROUP BY alert_id")
    assert sorted(queued) == sorted((alert, channels) for alert, _ in live)


async def test_the_enforcer_answers_snapshots_and_releases_again_after_postgres_restarts(
    nc: Client,
    nats_url: str,
    topology: Topology,
    embedded_postgres: EmbeddedPostgres,
    tmp_path: Path,
) -> None:
    """Its connection for snapshots and releases is made anew once lost, as its decider's
    is: without that, every one was answered "database unavailable" until a restart; and
    the first one after the restart is answered on the new connection, not refused."""
    settings = stack_settings(nats_url, embedded_postgres.url, topology, tmp_path)
    snapshot = topology.rpc_subject(RPC_SNAPSHOT, caller=settings.caller)
    release = topology.rpc_subject(RPC_RELEASE, caller=settings.caller)

    async def answered() -> bool:
        """a snapshot and a release answered, not refused"""
        try:
            answers = [
                await nc.request(snapshot, b'{"model": "gpt-4o"}', timeout=5),
                await nc.request(release, b'{"reservation_id": "none"}', timeout=5),
            ]
        except TimeoutError:
            return False
        return all("error" not in json.loads(a.data) for a in answers)

    async with enforcement_stack(nc, settings):
        await wait_for(answered, within=30)
        embedded_postgres.restart(immediate=True)
        assert await answered()


async def test_the_first_check_after_postgres_restarts_is_decided_not_refused(
    nc: Client,
    nats_url: str,
    topology: Topology,
    embedded_postgres: EmbeddedPostgres,
    tmp_path: Path,
) -> None:
    """The enforcer's connection lost with a restart (``budget up`` restarts a PostgreSQL
    that died) is found lost by the next check, which is then decided on a new one: before,
    it was refused "database unavailable" (fail closed under a BLOCK policy), with the
    database back."""
    settings = stack_settings(nats_url, embedded_postgres.url, topology, tmp_path)
    async with enforcement_stack(nc, settings) as stack:
        await stack.set_policy(limit_amount="100", action="block")
        await stack.enforcer_applies_policies()
        first = await stack.tracker.check_budget(
            "gpt-4o", user_id="u1", estimated_cost=Decimal("0.10")
        )
        assert first.allowed, first.reason
        embedded_postgres.restart(immediate=True)
        after = await stack.tracker.check_budget(
            "gpt-4o", user_id="u1", estimated_cost=Decimal("0.10")
        )
        assert after.allowed, after.reason
        assert after.reservation_id is not None


async def test_a_check_the_enforcer_cannot_decide_says_so_not_to_start_it(
    nc: Client,
    nats_url: str,
    topology: Topology,
    embedded_postgres: EmbeddedPostgres,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL down under a running enforcer: the refusal (fail closed) says the enforcer
    answered and cannot decide, not to start the enforcer that runs; libpq's message, which
    runs to several lines, is one line in the reason and in the log."""
    settings = stack_settings(nats_url, embedded_postgres.url, topology, tmp_path)
    async with enforcement_stack(nc, settings) as stack:
        await stack.set_policy(limit_amount="100", action="block")
        await stack.enforcer_applies_policies()
        allowed = await stack.tracker.check_budget(
            "gpt-4o", user_id="u1", estimated_cost=Decimal("0.10")
        )
        assert allowed.allowed, allowed.reason
        embedded_postgres.stop()
        try:
            refused = await stack.tracker.check_budget(
                "gpt-4o", user_id="u1", estimated_cost=Decimal("0.10")
            )
        finally:
            embedded_postgres.start()
        assert not refused.allowed
        assert "enforcer: database unavailable" in refused.reason, refused.reason
        assert "\n" not in refused.reason, refused.reason
        logged = [
            r.getMessage() for r in caplog.records if "cannot use PostgreSQL" in r.getMessage()
        ]
        assert logged and not any("\n" in line for line in logged), logged
        assert refused.reason.endswith(
            "; the enforcer runs but cannot decide (its answer above says why: its database,"
            " say); checks go through again once it can, or set budget.fail_open: true to allow"
        ), refused.reason
