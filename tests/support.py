"""Helpers the integration and end-to-end tests share."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from budget.config import Settings
from budget.periods import Period, period_bounds
from budget.queries import RpcQueries
from budget.spool import Spool
from events import (
    Event,
    PriceSource,
    TimeBounds,
    Topology,
    Usage,
    UsageRecorded,
    encode,
    headers_for,
    utc_now,
)
from projections.db import connect
from projections.engine.projection import Applied, Connection, Projection
from projections.engine.runner import EngineConfig, ProjectionRunner
from services.query_service import QueryService

ROOT = Path(__file__).resolve().parent.parent
ANY_TIME = TimeBounds(max_clock_skew=timedelta.max, max_event_age=timedelta.max)


def start_of(period: Period, ago: int = 0) -> datetime:
    """When the UTC calendar period ``ago`` periods before the current one started: an
    anchor for events that need calendar dates (a Monday, a month's start) yet must stay
    inside the contract's default time bounds (not ahead of now, not ``max_event_age``
    old) whenever the tests run, as a fixed date would not."""
    start, _ = period_bounds(period, utc_now())
    for _ in range(ago):
        start, _ = period_bounds(period, start - timedelta(days=1))
    return start


@contextlib.asynccontextmanager
async def query_service(nc: Client, settings: Settings) -> AsyncIterator[RpcQueries]:
    """The query service on ``nc`` for the block, and the host apps' way of asking it."""
    service = QueryService(settings, nc)
    await service.start()
    try:
        yield RpcQueries(settings, lambda: nc)
    finally:
        await service.stop()


def usage_event(
    *,
    cost: str | None = "0.0125",
    at: datetime | None = None,
    user: str | None = "alice",
    project: str | None = "apollo",
    model: str = "gpt-4o",
    provider: str = "openai",
) -> UsageRecorded:
    return UsageRecorded(
        occurred_at=at or utc_now(),
        provider=provider,
        model=model,
        usage=Usage(input_uncached=400, input_cache_read=100, output_text=250),
        cost=None if cost is None else Decimal(cost),
        unpriced_reason="no price" if cost is None else None,
        user_id=user,
        project_id=project,
    )


def mispriced(cost: str, **fields: Any) -> UsageRecorded:
    """A usage event (``usage_event``: acme-1 unless said) that an earlier, wrong price
    data made cost ``cost``: ``budget reprice`` is to correct it."""
    event = usage_event(cost=cost, **{"provider": "acme", "model": "acme-1", **fields})
    wrong = PriceSource(layer="genai-prices", data_version="0.0.1-wrong")
    return UsageRecorded.model_validate(event.model_dump() | {"price": wrong})


def varied_events(count: int, start: datetime | None = None) -> list[UsageRecorded]:
    """Events spread over users, models and ~40 days, so every period kind has rows; by
    default from the start of the month before last, so all of them lie in the past."""
    base = start or start_of(Period.MONTHLY, ago=2)
    return [
        usage_event(
            cost=None if i % 97 == 0 else f"0.00{i % 89 + 10}7",
            at=base + timedelta(hours=i * 7 % (24 * 40), seconds=i),
            user=f"user-{i % 13}",
            project=None if i % 5 == 0 else f"project-{i % 3}",
            model=("gpt-4o", "gpt-4o-mini", "claude-sonnet-4")[i % 3],
            provider=("openai", "openai", "anthropic")[i % 3],
        )
        for i in range(count)
    ]


async def publish(
    nc: Client, topology: Topology, events: Iterable[Event], *, msg_id: bool = True
) -> None:
    js = nc.jetstream()
    for event in events:
        headers = headers_for(event) if msg_id else None
        await js.publish_async(
            topology.event_subject(event.SUBJECT), encode(event), headers=headers
        )
    await js.publish_async_completed()


async def catch_up(
    projection: Projection | Sequence[Projection],
    nc: Client,
    database_url: str,
    topology: Topology,
    *,
    version: int | None = None,
    config: EngineConfig | None = None,
) -> None:
    """Run one projection (or a group) until it has committed everything in the log.
    Unless ``config`` says otherwise, events of any time are applied: tests build periods
    from fixed dates (the time bounds are proven in test_event_contract.py)."""
    runner = ProjectionRunner(
        projection,
        nc=nc,
        database_url=database_url,
        topology=topology,
        version=version,
        config=config or EngineConfig(time_bounds=ANY_TIME),
    )
    await runner.open()
    try:
        await runner.catch_up()
    finally:
        await runner.close()


async def apply_batch(
    conn: Connection, projection: Projection, version: int, batch: Sequence[Applied]
) -> None:
    """What the engine does with a batch for one projection, minus the checkpoint: record
    it in the projection's shared ledger first (inside the caller's transaction)."""
    if projection.ledger is not None:
        await projection.ledger.record(conn, batch, writer=f"test-{projection.name}-{version}")
    await projection.apply(conn, version, batch)


async def rows(database_url: str, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    conn: Connection = await connect(database_url)
    try:
        return list(await (await conn.execute(query.encode(), params)).fetchall())
    finally:
        await conn.close()


def scrape(url: str, *, token: str | None = None) -> list[Sample]:
    """Every sample a Prometheus endpoint serves (to the bearer of ``token``, if given)."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    answer = httpx.get(url, headers=headers, timeout=5)
    answer.raise_for_status()
    return [s for family in text_string_to_metric_families(answer.text) for s in family.samples]


def figure(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that carry ``labels`` (0 when there are none yet)."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


async def wait_for(predicate: Any, within: float = 30.0, interval: float = 0.1) -> None:
    """Await ``predicate()`` (an async callable) until true; fail with a clear message."""
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s: {predicate.__doc__}")
        await asyncio.sleep(interval)


def budget_process(
    args: Sequence[str], *, nats_url: str, database_url: str, topology: Topology, **extra: str
) -> subprocess.Popen[bytes]:
    """``budget ARGS`` as a child process against the given servers."""
    env = {
        **os.environ,
        "BUDGET_NATS_URL": nats_url,
        "BUDGET_DATABASE_URL": database_url,
        "BUDGET_SUBJECT_PREFIX": topology.prefix,
        **extra,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@contextlib.contextmanager
def disk_full(spool: Spool) -> Iterator[None]:
    """The spool's disk is full while inside: SQLite may not grow the file by a page
    (``SQLITE_FULL``, as on a full filesystem): a row needing a new page fails."""
    with spool._lock:
        db = spool._opened()
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")
    try:
        yield
    finally:
        with spool._lock:
            db.execute("PRAGMA max_page_count = 4294967294")
