"""Benchmark: one producer (this process) records usage while the workers consume, on the
embedded stack that ``budget up`` runs (every worker and service its own process).

By default the workers are what ``budget up`` runs (``services.stack.STACK_WORKERS``);
``--workers`` takes any names ``budget worker`` accepts (a projection, or a group of
them) and the services. When the alert evaluator runs, a per-user policy
(``--user-limit``, $0.50 a month) is the stream's first event, so users cross 80, 95 and
100 % while the benchmark runs (each phase has users of its own; ``--user-limit 0.08``
makes every user cross all three within 20 s at 1,000/s).

Figures (one JSON line each), in the order the phases run:

- ``catch_up_events_per_s``: ``--catch-up`` N usage events are published while no worker
  runs (the producer alone); then the workers start, and the figure is N over the time
  from their start until every usage projection's checkpoint reaches the stream's last
  sequence (``startup_s``: until each had committed its first batch).
- ``producer_events_per_s``: ``record_usage`` calls per second (pricing + publish, acked)
  while the workers consume.
- ``end_to_end_events_per_s``: ``--events`` N events from the first publish until
  committed in every usage projection.
- ``lag_p50_ms`` / ``lag_p99_ms`` at a steady ``--rate`` for ``--seconds``: publish ->
  committed in every projection that reads usage, per event (checkpoints polled every
  ~5 ms); ``by_projection`` gives each one's own, so the slowest shows.
- ``alert_latency_p50_ms`` / ``alert_latency_p99_ms`` at the steady rate: publish of the
  event that crossed a threshold -> the alert received on ``<prefix>.alerts.>``.
- ``rebuild_<projection>_events_per_s``: rebuilding each usage projection from the log
  (in this process, while the workers idle).
- ``cpu_us_per_event``, after each of those phases (``catch_up``, ``end_to_end``,
  ``steady``, ``rebuild_<projection>``): CPU µs per event of each ``process`` (each worker
  by its name, ``postgres``: all of its processes, ``nats``, and this process as
  ``producer`` or ``rebuild``), and the ``total`` with the cores it kept busy and
  ``others_cores_busy`` (the rest of the machine, which skews the figures). The
  catch-up's is over the time every usage projection was running (after ``startup_s``).

Issue 14's figures, one command each (run each 3 times back to back; medians):

    # rebuild spend and history from a stream of 200,000 usage events
    ./run python bench/ingest.py --workers spend,history --catch-up 200000 --events 0 --seconds 0
    # every usage projection catching up from a filled stream, every worker of `budget up`
    ./run python bench/ingest.py --catch-up 200000 --events 0 --seconds 0 --no-rebuild
    # end to end, one producer, every worker live
    ./run python bench/ingest.py --catch-up 0 --events 200000 --seconds 0 --no-rebuild
    # publish -> commit lag at a steady 2,000/s, every worker live
    ./run python bench/ingest.py --catch-up 0 --events 0 --rate 2000 --seconds 20 --no-rebuild
    # crossing -> alert on NATS at a steady 1,000/s (a limit every user crosses in 20 s)
    ./run python bench/ingest.py --catch-up 0 --events 0 --rate 1000 --seconds 20 --no-rebuild \\
        --user-limit 0.08

A plain ``./run python bench/ingest.py`` runs every phase on one stack (the rebuilds then
read the catch-up's, the full-speed and the steady phase's events).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import nats
from cpu import CpuMeter, Usage
from nats.aio.msg import Msg
from progress import (
    Checkpoints,
    check_workers,
    committed,
    stream_last_seq,
    usage_readers,
    wait_until_committed,
)
from stack import embedded_stack

from budget.config import Settings
from budget.tracker import UsageTracker, get_usage_tracker, start_usage_tracker
from events import BudgetPolicy, PolicySet, UsageRecorded, utc_now
from projections.db import connect
from projections.engine.rebuild import rebuild
from projections.registry import PROJECTIONS
from services.stack import STACK_WORKERS, StackInfo
from services.worker import tune_gc

MODELS = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4")]


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    print(
        json.dumps({"figure": figure, "value": round(value, 3), "unit": unit, **extra}), flush=True
    )


def emit_cpu(phase: str, usage: Usage, events: int, *, this_process: str) -> None:
    """``cpu_us_per_event`` of each process in ``phase``, then their total."""
    for process, value in usage.per_unit(events).items():
        name = this_process if process == "benchmark" else process
        emit("cpu_us_per_event", value, "us/event", phase=phase, process=name, events=events)
    emit(
        "cpu_us_per_event",
        sum(usage.cpu.values()) * 1e6 / max(events, 1),
        "us/event",
        phase=phase,
        process="total",
        events=events,
        seconds=round(usage.seconds, 2),
        cores_busy=round(usage.cores_busy, 2),
        others_cores_busy=round(usage.others_cores_busy(), 2),
    )


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


@dataclass(frozen=True)
class Filled:
    """The stream as the workers found it: ``events`` usage events up to ``last_seq``."""

    events: int
    last_seq: int
    at: float


async def fill(settings: Settings, n: int, user_limit: Decimal | None) -> Filled:
    """The policy (if any), then ``n`` usage events, published before any worker runs."""
    tracker = await start_usage_tracker(settings)
    if user_limit is not None:
        policy = BudgetPolicy(name="bench per user", scope="user", limit_amount=user_limit)
        await tracker.publisher.publish(PolicySet(occurred_at=utc_now(), policy=policy))
    for i in range(n):
        await record(tracker, i, users="catch-up")
    await tracker.flush()
    await tracker.close()
    last = await stream_last_seq(settings.nats_url, settings)
    return Filled(n, last, time.perf_counter())


async def catch_up(info: StackInfo, filled: Filled, workers: Sequence[str]) -> None:
    checkpoints = Checkpoints(info.database_url, workers)
    meter = CpuMeter(info.data_dir)
    conn = await connect(info.database_url)
    try:
        # Polled every 20 ms, not 5: a catch-up takes seconds, and each poll is a query
        # on the same two cores.
        first = filled.last_seq - filled.events + 1
        lowest = await committed(checkpoints, conn, first, 0.02)  # every reader has begun
        started, running = time.perf_counter(), meter.reading()
        await committed(checkpoints, conn, filled.last_seq, 0.02)
        done, usage = time.perf_counter(), meter.since(running)
    finally:
        await conn.close()
    applied = filled.last_seq - lowest
    emit(
        "catch_up_events_per_s",
        filled.events / (done - filled.at),
        "events/s",
        events=filled.events,
        startup_s=round(started - filled.at, 2),
        running_events_per_s=round(applied / (done - started)) if applied else None,
    )
    if applied:
        emit_cpu("catch_up", usage, applied, this_process="benchmark")


async def full_speed(
    tracker: UsageTracker, info: StackInfo, settings: Settings, n: int, workers: Sequence[str]
) -> None:
    base = await stream_last_seq(info.nats_url, settings)
    checkpoints = Checkpoints(info.database_url, workers)
    with CpuMeter(info.data_dir).measure() as usage:
        start = time.perf_counter()
        for i in range(n):
            await record(tracker, i)
        await tracker.flush()
        produced = time.perf_counter()
        done = await wait_until_committed(checkpoints, base + n)
    emit("producer_events_per_s", n / (produced - start), "events/s", events=n)
    emit("end_to_end_events_per_s", n / (done - start), "events/s", events=n)
    emit_cpu("end_to_end", usage, n, this_process="producer")


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
    total = int(rate * seconds)
    with CpuMeter(info.data_dir).measure() as usage:
        start = time.perf_counter()
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
    achieved = round(total / (sent[-1] - start))
    overall = lag_quantiles(checkpoints, sent, base, None)
    # Every reader's lag too (``by_projection``): which of them makes the figure.
    each = {r: lag_quantiles(checkpoints, sent, base, r) for r in checkpoints.readers}
    for p, figure in ((49, "lag_p50_ms"), (98, "lag_p99_ms")):
        emit(
            figure,
            overall[p],
            "ms",
            rate=rate,
            achieved_rate=achieved,
            by_projection={r: round(q[p], 1) for r, q in each.items()},
        )
    emit_cpu("steady", usage, total, this_process="producer")


def lag_quantiles(
    checkpoints: Checkpoints, sent: Sequence[float], base: int, reader: str | None
) -> list[float]:
    """Percentiles of the time from each event's publish until committed by every reader
    (or ``reader``), ms."""
    committed = checkpoints.committed_times(base + 1, len(sent), reader)
    return statistics.quantiles(
        [(done - at) * 1000 for at, done in zip(sent, committed, strict=True)], n=100
    )


async def rebuilds(info: StackInfo, settings: Settings, names: Sequence[str]) -> None:
    tune_gc()  # as `budget projections rebuild` does
    meter = CpuMeter(info.data_dir)
    nc = await nats.connect(info.nats_url)
    try:
        total = await stream_last_seq(info.nats_url, settings)
        for name in names:
            with meter.measure() as usage:
                start = time.perf_counter()
                await rebuild(
                    PROJECTIONS[name],
                    nc=nc,
                    database_url=info.database_url,
                    topology=settings.topology,
                )
                seconds = time.perf_counter() - start
            emit(f"rebuild_{name}_events_per_s", total / seconds, "events/s", events=total)
            emit_cpu(f"rebuild_{name}", usage, total, this_process="rebuild")
    finally:
        await nc.close()


async def main(args: argparse.Namespace) -> None:
    workers = args.workers.split(",")
    check_workers(workers)
    readers = usage_readers(workers)
    filled: list[Filled] = []

    async def before_workers(nats_url: str, database_url: str, settings: Settings) -> None:
        here = settings.model_copy(update={"nats_url": nats_url, "database_url": database_url})
        alerting = "alerts" in readers
        filled.append(await fill(here, args.catch_up, args.user_limit if alerting else None))

    async with embedded_stack("ingest", workers=workers, before_workers=before_workers) as (
        info,
        settings,
    ):
        if args.catch_up:
            await catch_up(info, filled[0], workers)
        tracker = await get_usage_tracker(settings)
        for i in range(1000):  # warm up: connections, price cache, worker consumers
            await record(tracker, i, users="warm-up")
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
            await rebuilds(info, settings, readers)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--catch-up", type=int, default=200_000, help="events published before workers start"
    )
    parser.add_argument("--events", type=int, default=200_000, help="full-speed events")
    parser.add_argument("--rate", type=float, default=2000, help="steady rate, events/s")
    parser.add_argument("--seconds", type=float, default=20, help="steady phase length")
    parser.add_argument("--no-rebuild", dest="rebuild", action="store_false")
    parser.add_argument(
        "--workers",
        default=",".join(STACK_WORKERS),
        help="comma-separated workers and services to run (default: what `budget up` runs)",
    )
    parser.add_argument(
        "--user-limit",
        type=Decimal,
        default=Decimal("0.50"),
        help="USD per user per month: low enough that users cross 80/95/100 %% in the run",
    )
    asyncio.run(main(parser.parse_args()))
