"""The public API reads through the query service over NATS, never from the database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from budget.manager import BudgetManager
from budget.queries import RpcQueries
from budget.reports import ReportGenerator
from budget.rpc import Refused, ServiceUnavailable, Unanswered
from budget.tracker import start_usage_tracker
from events import BudgetPolicy, BudgetScope, Topology, utc_now
from events.queries import QUERY_REPORT, QUERY_SPEND, SpendQuery
from events.rpc import RpcError
from projections.database_queries import ConnectionLost, DatabaseQueries
from projections.registry import get_projection
from services.embedded import EmbeddedPostgres
from services.fair_queue import FairQueue
from services.liveness import Liveness
from services.ops import prepare
from services.query_service import QueryService

from enforcement import projection_workers, stack_settings
from support import catch_up, publish, query_service, usage_event, wait_for

pytestmark = pytest.mark.integration
NO_DATABASE = "postgresql://nobody@127.0.0.1:1/none"


@pytest.fixture
async def workers(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> AsyncIterator[None]:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    await prepare(nats_url, db, settings)
    async with projection_workers(nc, settings, "policies", "spend"):
        yield


async def test_a_host_app_without_database_access_manages_policies_and_reads_spend(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path, workers: None
) -> None:
    service_settings = stack_settings(nats_url, db, topology, tmp_path)
    host_settings = stack_settings(nats_url, NO_DATABASE, topology, tmp_path / "host")
    await publish(nc, topology, [usage_event(cost="1.25", at=utc_now() - timedelta(minutes=1))])
    tracker = await start_usage_tracker(host_settings)
    try:
        async with query_service(nc, service_settings):
            manager = BudgetManager(host_settings, tracker)
            policy = BudgetPolicy(
                name="team", scope=BudgetScope.USER, scope_key="alice", limit_amount=Decimal(5)
            )
            await manager.set_policy(policy)
            assert await manager.get_policy(policy.policy_id) == policy
            assert await manager.get_policies(BudgetScope.GLOBAL) == []
            assert await manager.delete_policy(policy.policy_id)
            assert await manager.get_policies() == []

            async def alice_spend() -> list[Decimal]:
                rows = await manager.get_spend_summary(scope=BudgetScope.USER)
                return [r.cost for r in rows if r.scope_key == "alice"]

            for _ in range(500):  # the spend worker may still be reading the event
                if await alice_spend():
                    break
                await asyncio.sleep(0.01)
            assert await alice_spend() == [Decimal("1.25")]
    finally:
        await tracker.close()


async def test_a_spend_summary_larger_than_one_nats_message_is_answered_whole(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    now = utc_now()
    # ~1.4 MB of rows, one a user; keys whose order differs by collation among them
    users = [f"user-{i}" for i in range(8_000)] + ["b", "B", "é", "e", "Zoë", "zoe"]
    await publish(nc, topology, [usage_event(user=u, at=now - timedelta(minutes=1)) for u in users])
    await catch_up(get_projection("spend"), nc, db, topology)
    async with query_service(nc, settings) as asked, DatabaseQueries(db) as read:
        for query in (SpendQuery(at=now), SpendQuery(at=now, scope=BudgetScope.USER)):
            rows = await asked.spend(query)
            assert rows == await read.spend(query)  # the CLI's way: no NATS message between
    assert {r.scope_key for r in rows} == set(users)


async def test_a_wrong_question_is_refused_with_the_services_reason(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    async with query_service(nc, settings) as queries:
        now = utc_now()
        with pytest.raises(Refused, match="cannot group by colour"):
            await ReportGenerator(queries).generate_report(now - timedelta(days=1), now, ["colour"])


@pytest.mark.parametrize(
    ("query", "payload", "field"),
    [
        (QUERY_SPEND, {"at": "9999-12-31T23:59:59Z"}, "at"),
        (QUERY_SPEND, {"period": "weekly", "at": "0001-01-01T00:00:00Z"}, "at"),
        (
            QUERY_REPORT,
            {"kind": "custom", "start": "2026-01-01T00:00:00Z", "end": "9999-12-31T23:00:00Z"},
            "end",
        ),
    ],
)
async def test_a_time_out_of_range_is_refused_naming_the_field_and_the_range(
    nc: Client,
    nats_url: str,
    db: str,
    topology: Topology,
    tmp_path: Path,
    query: str,
    payload: dict[str, str],
    field: str,
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    subject = topology.rpc_subject(query, caller=settings.caller)
    async with query_service(nc, settings):
        reply = await nc.request(subject, json.dumps(payload).encode(), timeout=10)
    error = RpcError.model_validate_json(reply.data).error
    assert f": {field}: " in error, error
    assert error.endswith(
        "is out of range: a time from 1900-01-01 up to 9000-01-01 (UTC) is accepted"
    )


async def test_a_query_service_without_its_database_says_so(
    nc: Client, nats_url: str, topology: Topology, tmp_path: Path
) -> None:
    """The asker (a host app) is told the database is unavailable, not libpq's text, which
    names the database's address, port and role (the query service's log has it)."""
    settings = stack_settings(nats_url, NO_DATABASE, topology, tmp_path)
    async with query_service(nc, settings) as queries:
        with pytest.raises(ServiceUnavailable, match="database unavailable") as refused:
            await queries.policies()
    told = str(refused.value)
    assert not any(part in told for part in ("127.0.0.1", "port 1", "nobody")), told


async def test_a_query_service_that_cannot_reach_its_database_is_reported_until_it_is_back(
    nc: Client,
    nats_url: str,
    topology: Topology,
    tmp_path: Path,
    embedded_postgres: EmbeddedPostgres,
) -> None:
    """Its health check says so (and questions are refused at once, saying why) once the
    database has been away for ``stall_after``; healthy and answering again once it is back."""
    db = embedded_postgres.url
    settings = stack_settings(nats_url, db, topology, tmp_path)
    await prepare(nats_url, db, settings)
    liveness = Liveness()
    service = QueryService(settings, nc, liveness=liveness, probe_every=0.1, stall_after=1.0)
    await service.start()
    queries = RpcQueries(settings, lambda: nc)
    try:
        assert await queries.policies() == []
        embedded_postgres.stop()

        async def reported() -> bool:
            """the database probe is reported stalled"""
            return any(
                p.startswith("query service database stalled: failing for")
                for p in liveness.problems()
            )

        await wait_for(reported)
        with pytest.raises(
            ServiceUnavailable, match="not healthy: query service database stalled"
        ) as refused:
            await queries.policies()
        # The asker is not told libpq's text, which names the database's socket (the
        # health check's log line does).
        assert "socket" in "; ".join(liveness.problems())
        assert "socket" not in str(refused.value), refused.value
        embedded_postgres.start()

        async def healthy() -> bool:
            """the probe reached the database again"""
            return liveness.problems() == []

        await wait_for(healthy)
        assert await queries.policies() == []  # its pool's connections were the old server's
    finally:
        await service.stop()


async def test_a_question_loop_that_died_is_reported_and_said_to_every_asker(
    nc: Client,
    nats_url: str,
    db: str,
    topology: Topology,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug that ends the loop taking one kind of question (here its queue fails on a
    spend question) would leave those questions unanswered while the service looked
    healthy: its health report names the dead loop (the heartbeat stops), and the other
    questions are refused saying why."""
    taking = FairQueue.take

    async def take_failing_on_spend(
        queue: FairQueue[tuple[Msg, float]], most: int
    ) -> list[tuple[str, tuple[Msg, float]]]:
        taken = await taking(queue, most)
        if any(msg.subject.endswith(QUERY_SPEND) for _, (msg, _) in taken):
            raise RuntimeError("a bug in the loop")
        return taken

    monkeypatch.setattr(FairQueue, "take", take_failing_on_spend)
    settings = stack_settings(nats_url, db, topology, tmp_path)
    await prepare(nats_url, db, settings)
    liveness = Liveness()
    service = QueryService(settings, nc, liveness=liveness)
    await service.start()
    queries = RpcQueries(settings, lambda: nc)
    try:
        assert await queries.policies() == []
        spend = topology.rpc_subject(QUERY_SPEND, caller=settings.caller)
        await nc.publish(spend, SpendQuery().model_dump_json().encode(), reply=nc.new_inbox())

        async def reported() -> bool:
            """the spend questions' loop is reported dead"""
            return liveness.problems() == [
                "query service query.spend loop died: RuntimeError('a bug in the loop')"
            ]

        await wait_for(reported)
        died = r"not healthy: query service query\.spend loop died"
        with pytest.raises(ServiceUnavailable, match=died):
            await queries.policies()
    finally:
        await service.stop()


async def test_reads_after_the_database_restarted_are_answered(
    nats_url: str, topology: Topology, tmp_path: Path, embedded_postgres: EmbeddedPostgres
) -> None:
    """The pool's connections were the old server's: a read finds its own dropped, and is
    run again on a fresh one (the HTTP API reads through the same pool)."""
    db = embedded_postgres.url
    await prepare(nats_url, db, stack_settings(nats_url, db, topology, tmp_path))
    queries = DatabaseQueries(db, connections=2)
    try:
        assert await queries.policies() == [] and await queries.rules() != []
        embedded_postgres.stop()
        embedded_postgres.start()
        assert await queries.policies() == []
        with pytest.raises(ConnectionLost):  # a block on a pooled connection says so
            embedded_postgres.stop()
            embedded_postgres.start()
            async with queries.connection() as conn:
                await conn.execute("SELECT 1")
        assert await queries.rules() != []
    finally:
        await queries.close()


async def test_no_query_service_gives_an_error_that_says_to_start_one(
    nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path, query_timeout=0.5)
    tracker = await start_usage_tracker(settings)
    try:
        with pytest.raises(Unanswered, match="start `budget query-service`"):
            await BudgetManager(settings, tracker).get_policies()
    finally:
        await tracker.close()


async def test_a_question_asked_while_the_query_service_starts_is_answered(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    await prepare(nats_url, db, settings)
    tracker = await start_usage_tracker(settings)
    try:
        client = tracker.publisher.client
        assert client is not None
        before = client.stats["out_msgs"]
        asked = asyncio.create_task(BudgetManager(settings, tracker).get_policies())

        async def asked_twice() -> bool:
            """asked twice: no service answered the first time, the question waits for one"""
            return int(client.stats["out_msgs"]) >= before + 2

        await wait_for(asked_twice)
        assert not asked.done()
        async with query_service(nc, settings):
            assert await asked == []
    finally:
        await tracker.close()
