"""Benchmark: one producer process records usage while the workers consume, on the
embedded stack that ``budget up`` runs (workers are separate processes).

By default every worker ``budget up`` runs is live: spend, history, policies, alerts and
reports, plus the enforcer, the notifier and the query service. A per-user policy
(``--user-limit``, $0.50 a month) makes every user cross 80, 95 and 100 % while the
benchmark runs. ``--workers spend,history`` runs only those two projectors (issue 2's
set-up: no policy, no alerts).

Figures (one JSON line each):
- ``producer_events_per_s``: ``record_usage`` calls per second (pricing + publish, acked).
- ``end_to_end_events_per_s``: N events from the first publish until committed in every
  projection.
- ``lag_p50_ms`` / ``lag_p99_ms`` at a steady rate: publish -> committed in every
  projection that reads usage, per event (the checkpoints are polled every ~5 ms).
- ``alert_latency_p50_ms`` / ``alert_latency_p99_ms`` at the steady rate: publish of the
  event that crossed a threshold -> the alert received on ``<prefix>.alerts.>``.
- ``rebuild_<projection>_events_per_s``: rebuilding each projection from the log.

Run: ``./run python bench/ingest.py [--events 200000] [--rate 5000 --seconds 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from decimal import Decimal

import nats
from nats.aio.msg import Msg
from stack import embedded_stack

from budget.config import Settings
from budget.manager import BudgetManager
from budget.tracker import UsageTracker, get_usage_tracker
from events import BudgetPolicy, UsageRecorded
from projections.db import connect
from projections.engine.projection import Connection
from projections.engine.rebuild import rebuild
from projections.registry import PROJECTIONS
from services.stack import SERVICES, StackInfo
from services.worker import tune_gc

MODELS = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4")]


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    print(
        json.dumps({"figure": figure, "value": round(value, 3), "unit": unit, **extra}), flush=True
    )


ALL_WORKERS = [*PROJECTIONS, *SERVICES]


async def record(tracker: UsageTracker, i: int, users: str = "user") -> UsageRecorded:
    provider, model = MODELS[i % len(MODELS)]
    return await tracker.record_usage(
        model=model,
        provider=provider,
        input_tokens=800 + i % 400,
        cached_tokens=i % 200,
        output_tokens=300 + i % 100,
        user_id=f"{users}-{i % 500}",
        project_id=f"project-{i % 20}",
    )


class Checkpoints:
    """The lowest checkpoint over the running projections that read usage, polled in the
    background."""

    def __init__(self, database_url: str, workers: Sequence[str]) -> None:
        self.database_url = database_url
        self.readers = [
            n for n in workers if n in PROJECTIONS and UsageRecorded in PROJECTIONS[n].event_types
        ]
        self.samples: list[tuple[float, int]] = []

    async def lowest(self, conn: Connection) -> int:
        cursor = await conn.execute(
            "SELECT min(stream_seq) FROM projection_checkpoints c JOIN projection_registry r"
            " ON r.name = c.name AND r.active_version = c.version WHERE c.name = ANY(%s)",
            (self.readers,),
        )
        row = await cursor.fetchone()
        return int(row[0] or 0)

    async def poll(self, stop: asyncio.Event, interval: float = 0.005) -> None:
        conn = await connect(self.database_url)
        try:
            while not stop.is_set():
                self.samples.append((time.perf_counter(), await self.lowest(conn)))
                await asyncio.sleep(interval)
        finally:
            await conn.close()

    def committed_at(self, seq: int) -> float | None:
        for at, done in self.samples:  # samples are in time order and non-decreasing
            if done >= seq:
                return at
        return None


async def wait_until_committed(checkpoints: Checkpoints, seq: int) -> float:
    conn = await connect(checkpoints.database_url)
    try:
        while await checkpoints.lowest(conn) < seq:  # noqa: ASYNC110 - polling the database
            await asyncio.sleep(0.005)
        return time.perf_counter()
    finally:
        await conn.close()


async def stream_last_seq(nats_url: str, settings: Settings) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(settings.topology.event_stream.name)
        return int(info.state.last_seq)
    finally:
        await nc.close()


async def full_speed(
    tracker: UsageTracker, info: StackInfo, settings: Settings, n: int, workers: Sequence[str]
) -> None:
    base = await stream_last_seq(info.nats_url, settings)
    checkpoints = Checkpoints(info.database_url, workers)
    start = time.perf_counter()
    for i in range(n):
        await record(tracker, i)
    await tracker.flush()
    produced = time.perf_counter()
    done = await wait_until_committed(checkpoints, base + n)
    emit("producer_events_per_s", n / (produced - start), "events/s", events=n)
    emit("end_to_end_events_per_s", n / (done - start), "events/s", events=n)


async def steady(
    tracker: UsageTracker,
    info: StackInfo,
    settings: Settings,
    rate: float,
    seconds: float,
    workers: Sequence[str],
) -> None:
    base = await stream_last_seq(info.nats_url, settings)
    checkpoints = Checkpoints(info.database_url, workers)
    stop = asyncio.Event()
    poller = asyncio.create_task(checkpoints.poll(stop))
    alerts: list[tuple[float, str]] = []
    nc = await nats.connect(info.nats_url)

    async def on_alert(msg: Msg) -> None:
        alerts.append((time.perf_counter(), json.loads(msg.data)["caused_by"]))

    await nc.subscribe(f"{settings.topology.prefix}.alerts.>", cb=on_alert)
    sent: list[float] = []
    published: dict[str, float] = {}
    start = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent.append(time.perf_counter())
        event = await record(tracker, i, users="steady")
        published[str(event.event_id)] = sent[-1]
    await tracker.flush()
    await wait_until_committed(checkpoints, base + total)
    await asyncio.sleep(1.0)  # the last alerts
    stop.set()
    await poller
    await nc.close()
    delays = [(at - published[cause]) * 1000 for at, cause in alerts if cause in published]
    if len(delays) >= 2:
        p50, p99 = statistics.quantiles(delays, n=100)[49], statistics.quantiles(delays, n=100)[98]
        emit("alert_latency_p50_ms", p50, "ms", rate=rate, alerts=len(delays))
        emit("alert_latency_p99_ms", p99, "ms", rate=rate, alerts=len(delays))
    lags = []
    for k, at in enumerate(sent, start=1):
        committed = checkpoints.committed_at(base + k)
        assert committed is not None
        lags.append((committed - at) * 1000)
    quantiles = statistics.quantiles(lags, n=100)
    achieved = total / (sent[-1] - start)
    emit("lag_p50_ms", quantiles[49], "ms", rate=rate, achieved_rate=round(achieved))
    emit("lag_p99_ms", quantiles[98], "ms", rate=rate, achieved_rate=round(achieved))


async def rebuilds(info: StackInfo, settings: Settings, names: Sequence[str]) -> None:
    tune_gc()  # as `budget projections rebuild` does
    nc = await nats.connect(info.nats_url)
    try:
        total = await stream_last_seq(info.nats_url, settings)
        for name in names:
            start = time.perf_counter()
            await rebuild(
                PROJECTIONS[name], nc=nc, database_url=info.database_url, topology=settings.topology
            )
            emit(
                f"rebuild_{name}_events_per_s",
                total / (time.perf_counter() - start),
                "events/s",
                events=total,
            )
    finally:
        await nc.close()


async def main(args: argparse.Namespace) -> None:
    workers = args.workers.split(",")
    unknown = set(workers) - set(ALL_WORKERS)
    if unknown:
        raise SystemExit(f"unknown workers {sorted(unknown)}; choose from {ALL_WORKERS}")
    async with embedded_stack("ingest", workers=workers) as (info, settings):
        tracker = await get_usage_tracker(settings)
        if {"policies", "query-service"} <= set(workers):
            await BudgetManager(settings, tracker, apply_timeout=60).set_policy(
                BudgetPolicy(name="bench per user", scope="user", limit_amount=args.user_limit)
            )
        for i in range(1000):  # warm up: connections, price cache, worker consumers
            await record(tracker, i)
        await tracker.flush()
        # The workers start in parallel with this process: measure only once they run.
        warm = await stream_last_seq(info.nats_url, settings)
        await wait_until_committed(Checkpoints(info.database_url, workers), warm)
        if args.events:
            await full_speed(tracker, info, settings, args.events, workers)
        if args.seconds:
            await steady(tracker, info, settings, args.rate, args.seconds, workers)
        await tracker.close()
        if args.rebuild:
            await rebuilds(info, settings, [n for n in workers if n in PROJECTIONS])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="full-speed events")
    parser.add_argument("--rate", type=float, default=5000, help="steady rate, events/s")
    parser.add_argument("--seconds", type=float, default=20, help="steady phase length")
    parser.add_argument("--no-rebuild", dest="rebuild", action="store_false")
    parser.add_argument(
        "--workers",
        default=",".join(ALL_WORKERS),
        help="comma-separated workers to run (default: all that `budget up` runs)",
    )
    parser.add_argument(
        "--user-limit",
        type=Decimal,
        default=Decimal("0.50"),
        help="USD per user per month: low enough that users cross 80/95/100 %% in the run",
    )
    asyncio.run(main(parser.parse_args()))
