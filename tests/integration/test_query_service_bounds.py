"""What one caller's questions may take of the query service: never every connection to
the database, so one host's slow reports leave the others answered; no more time than its
asker waits for the answer; and, waiting for a change to apply, a few reads a second. A
table held locked
stands in for a slow report (a year of history filtered on millions of calls): its
questions wait on it in the database as long as the lock is held."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError

from budget.rpc import Refused, ServiceUnavailable, ask
from events import Topology, utc_now
from events.queries import (
    QUERY_POLICIES,
    QUERY_REPORT,
    PoliciesAnswer,
    PoliciesQuery,
    ReportAnswer,
    ReportQuery,
)
from projections.database_queries import DatabaseQueries
from projections.db import connect
from projections.engine.projection import Connection
from services.ops import prepare
from services.query_service import QueryService

from enforcement import stack_settings
from support import query_service, rows, wait_for

pytestmark = pytest.mark.integration
T = TypeVar("T")
ANSWER_WITHIN = 10.0
GREEDY_IN_FLIGHT = 8  # caller_query_in_flight's default: all of them at once


@contextlib.asynccontextmanager
async def locked(database_url: str, table: str) -> AsyncIterator[None]:
    """``table`` locked against every read for the block: a read of it waits meanwhile."""
    conn = await connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE".encode())
            yield
    finally:
        await conn.close()


async def waiting_on(database_url: str, table: str) -> int:
    """How many sessions wait for a lock on ``table``."""
    [(count,)] = await rows(
        database_url,
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
        (table,),
    )
    return int(count)


def history(until: datetime) -> ReportQuery:
    return ReportQuery(kind="history", start=datetime(2000, 1, 1, tzinfo=until.tzinfo), end=until)


async def test_one_callers_slow_reports_leave_another_caller_answered(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    await prepare(nats_url, db, settings)
    greedy = topology.rpc_subject(QUERY_REPORT, caller="greedy")
    polite = topology.rpc_subject(QUERY_POLICIES, caller="polite")
    async with query_service(nc, settings):
        async with locked(db, "usage_history"):
            slow = [
                asyncio.create_task(ask(nc, greedy, history(utc_now()), ReportAnswer, within=60))
                for _ in range(GREEDY_IN_FLIGHT)
            ]

            async def greedy_questions_wait() -> bool:
                """the greedy caller's reports wait in the database"""
                return await waiting_on(db, "usage_history") > 0

            await wait_for(greedy_questions_wait, within=ANSWER_WITHIN)
            answer = await ask(nc, polite, PoliciesQuery(), PoliciesAnswer, within=ANSWER_WITHIN)
            assert answer.policies == []
        reports = await asyncio.gather(*slow)
    assert [r.tables[0].rows for r in reports] == [[]] * GREEDY_IN_FLIGHT


async def test_a_question_is_worked_on_only_as_long_as_its_asker_waits_and_says_so(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    await prepare(nats_url, db, settings)
    subject = topology.rpc_subject(QUERY_REPORT, caller="impatient")
    async with query_service(nc, settings):
        async with locked(db, "usage_history"):
            with pytest.raises(Refused, match="report took longer than its asker waits"):
                await ask(nc, subject, history(utc_now()), ReportAnswer, within=1)

            async def abandoned_query_cancelled() -> bool:
                """the report nobody waits for no longer waits in the database"""
                return await waiting_on(db, "usage_history") == 0

            await wait_for(abandoned_query_cancelled, within=ANSWER_WITHIN)
        report = await ask(nc, subject, history(utc_now()), ReportAnswer, within=ANSWER_WITHIN)
    assert report.tables[0].rows == []


class CountedReads(DatabaseQueries):
    """The query service's reads, counted."""

    reads = 0

    async def read(self, query: Callable[[Connection], Awaitable[T]]) -> T:
        self.reads += 1
        return await super().read(query)


async def test_a_wait_for_a_change_to_apply_reads_the_database_a_few_times_a_second(
    db: str,
) -> None:
    async with CountedReads(db) as queries:
        # a change its worker never applies: the question waits its whole time
        assert await queries.position("spend", at_least=1, within=2.0) == 0
    # 10 ms after the first read, then twice as long after each, at most 100 ms: however
    # fast the database answers (at a read every 10 ms: 200)
    assert queries.reads <= 25


async def no_responders(nc: Client, subject: str) -> bool:
    """Whether NATS answers a question on ``subject`` that no query service takes it."""
    try:
        await nc.request(subject, b"{}", timeout=1)
    except NoRespondersError:
        return True
    except TimeoutError:  # taken before the service stopped taking: not answered yet
        pass
    return False


async def test_a_question_in_flight_when_the_service_stops_is_answered(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    """A deploy or a rolling restart stops a query service while a report runs: the
    report is still answered, and the stopping service takes no new question."""
    settings = stack_settings(nats_url, db, topology, tmp_path)
    await prepare(nats_url, db, settings)
    subject = topology.rpc_subject(QUERY_REPORT, caller="asker")
    service = QueryService(settings, nc, drain_within=60)
    await service.start()
    async with locked(db, "usage_history"):
        asked = asyncio.create_task(ask(nc, subject, history(utc_now()), ReportAnswer, within=60))

        async def question_runs() -> bool:
            """the report waits in the database"""
            return await waiting_on(db, "usage_history") > 0

        await wait_for(question_runs, within=ANSWER_WITHIN)
        stopping = asyncio.create_task(service.stop())

        async def taking_no_more() -> bool:
            """the stopping service takes no new question"""
            return await no_responders(nc, subject)

        await wait_for(taking_no_more, within=ANSWER_WITHIN)
        assert not asked.done() and not stopping.done()  # the report still waits
    report = await asked
    await stopping
    assert report.tables[0].rows == []


async def test_a_question_still_running_when_the_drain_ends_is_told_the_service_stopped(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    """Not left to wait out its whole time for an answer that never comes."""
    settings = stack_settings(nats_url, db, topology, tmp_path)
    await prepare(nats_url, db, settings)
    subject = topology.rpc_subject(QUERY_REPORT, caller="asker")
    service = QueryService(settings, nc, drain_within=0.5)
    await service.start()
    async with locked(db, "usage_history"):
        asked = asyncio.create_task(ask(nc, subject, history(utc_now()), ReportAnswer, within=60))

        async def question_runs() -> bool:
            """the report waits in the database"""
            return await waiting_on(db, "usage_history") > 0

        await wait_for(question_runs, within=ANSWER_WITHIN)
        async with asyncio.timeout(ANSWER_WITHIN):
            await service.stop()
            with pytest.raises(ServiceUnavailable, match="query service: stopped before"):
                await asked
