"""Benchmark: the alert evaluator replaying a filled log, nothing else running.

A private NATS and PostgreSQL get a per-user policy (``--user-limit`` a month) and
``--events`` usage events (500 users, 20 projects, 3 models) spread over the ``--days``
before ``--until``, with a spike in the last hour (``--spike`` of the events): every user crosses
the default rules' 80, 95 and 100 % in the first month, and the last hour is anomalous for
the global, provider, model and project totals (the default anomaly rule). Then the alerts
projection is rebuilt from the log ``--runs`` times, each into a new version beside the
live one (``rebuild(..., swap=False)``: stored, never sent).

Figures (one JSON line each, per run):
- ``alerts_events_per_s``: usage events replayed per second.
- ``alerts_python_us_per_event``: CPU of this process (the evaluator) per event.
- ``alerts_postgres_us_per_event``: CPU of every PostgreSQL process per event (sampled
  every 50 ms: a backend's last few ms before it exits are missed).
- ``alerts_nats_us_per_event``: CPU of the NATS server per event.
- ``alerts_raised``: the alerts the version holds, with ``digest``: an md5 over them all
  (ids, amounts, causes, times): event ids and times follow from the arguments, so runs
  of the same hour, or of two versions of the code, compare.

``--reference`` also replays, after each run, the same counting without any rule
(``count_only_*``: a spend projection counting the usage ledger's rows, as the evaluator
counts): the difference is what evaluating the rules costs. The first run's replay finds
the usage ledger empty and records it, decoding every event, as the evaluator does alone;
every later replay reads it, as the evaluator does when the usage group has recorded the
log (``ledger.COUNTING_LEDGER``). ``--profile FILE`` writes a cProfile of the
first run to FILE and prints its top entries.

Run: ``./run python bench/alerts.py [--events 100000] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import nats

from budget.config import Settings
from events import (
    BudgetPolicy,
    BudgetScope,
    PolicySet,
    Topology,
    Usage,
    UsageRecorded,
    encode,
    headers_for,
    utc_now,
)
from projections.alerts import AlertsProjection
from projections.db import connect
from projections.engine.projection import Projection, physical
from projections.engine.rebuild import rebuild
from projections.spend import SpendProjection
from services.embedded import EmbeddedNats, EmbeddedPostgres
from services.ops import prepare
from services.worker import tune_gc

# provider, model, USD per million input and output tokens
MODELS = [
    ("openai", "gpt-4o", Decimal("2.5"), Decimal(10)),
    ("openai", "gpt-4o-mini", Decimal("0.15"), Decimal("0.6")),
    ("anthropic", "claude-sonnet-4", Decimal(3), Decimal(15)),
]
_MILLION = Decimal(1_000_000)
COUNT_ONLY = SpendProjection(
    "bench_count", counts_recorded=True, settles_reservations=False, cost_only=True
)
"""What the evaluator does to count usage, without a rule: its cost is the floor."""
# Event ids, like times, follow from the arguments: the same log, so the same alerts.
_EVENT_IDS = uuid.UUID("0d7c5a8e-3a52-4c1f-9a4e-6f1b2c3d4e5f")


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    print(
        json.dumps({"figure": figure, "value": round(value, 3), "unit": unit, **extra}), flush=True
    )


def usage(i: int, n: int, until: datetime, days: float, spike: float) -> UsageRecorded:
    """Event ``i`` of ``n``: in log order, evenly over ``days`` before the hour before
    ``until``, the last ``spike`` share of them inside that hour."""
    now = until
    calm = int(n * (1 - spike))
    if i < calm:
        at = now - timedelta(hours=1) - timedelta(days=days) * (1 - i / calm)
    else:
        at = now - timedelta(hours=1) * (1 - (i - calm) / max(1, n - calm))
    provider, model, input_rate, output_rate = MODELS[i % len(MODELS)]
    tokens_in, tokens_out = 800 + i % 400, 300 + i % 100
    return UsageRecorded(
        event_id=uuid.uuid5(_EVENT_IDS, str(i)),
        occurred_at=at,
        provider=provider,
        model=model,
        usage=Usage(input_uncached=tokens_in, output_text=tokens_out),
        cost=(tokens_in * input_rate + tokens_out * output_rate) / _MILLION,
        user_id=f"user-{i % 500}",
        project_id=f"project-{i % 20}",
    )


async def fill(nats_url: str, topology: Topology, args: argparse.Namespace) -> None:
    policy = BudgetPolicy(
        policy_id="bench-per-user",
        name="bench per user",
        scope=BudgetScope.USER,
        limit_amount=args.user_limit,
    )
    events = [
        PolicySet(
            event_id=uuid.uuid5(_EVENT_IDS, "policy"),
            occurred_at=args.until - timedelta(days=args.days + 1),
            policy=policy,
        ),
        *(usage(i, args.events, args.until, args.days, args.spike) for i in range(args.events)),
    ]
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for event in events:
            await js.publish_async(
                topology.event_subject(event.SUBJECT), encode(event), headers=headers_for(event)
            )
        await js.publish_async_completed()
    finally:
        await nc.close()


def _ticks(stat: str) -> tuple[int, int]:
    """(parent pid, user + system CPU ticks) from a /proc/<pid>/stat line."""
    fields = stat.rpartition(")")[2].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def cpu_seconds(pid: int) -> float:
    return _ticks(Path(f"/proc/{pid}/stat").read_text())[1] / os.sysconf("SC_CLK_TCK")


class ChildrenCpu:
    """CPU of a server's child processes (PostgreSQL's backends), sampled every
    ``interval``: a backend that exits is counted as last seen (its parent's ``cutime``
    does not reliably hold it by the time the run ends)."""

    def __init__(self, parent: int, interval: float = 0.05) -> None:
        self.parent, self.interval = parent, interval
        self.seen: dict[int, int] = {}
        self.start: dict[int, int] = {}

    def sample(self) -> None:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parent, ticks = _ticks((entry / "stat").read_text())
                except OSError:
                    continue  # ended between listing and reading
                if parent == self.parent:
                    self.seen[int(entry.name)] = ticks

    async def watch(self, stop: asyncio.Event) -> None:
        self.sample()
        self.start = dict(self.seen)
        while not stop.is_set():
            await asyncio.sleep(self.interval)
            self.sample()

    @property
    def seconds(self) -> float:
        used = sum(t - self.start.get(pid, 0) for pid, t in self.seen.items())
        return used / os.sysconf("SC_CLK_TCK")


async def alerts_digest(database_url: str, version: int) -> tuple[int, str]:
    alerts = physical("alerts", version)
    conn = await connect(database_url)
    try:
        cursor = await conn.execute(
            f"SELECT count(*), md5(coalesce(string_agg(alert::text || stream_seq,"
            f" ',' ORDER BY alert_id), '')) FROM {alerts}".encode()
        )
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0]), str(row[1])
    finally:
        await conn.close()


async def replay(
    projection: Projection,
    nats_url: str,
    database_url: str,
    settings: Settings,
    postgres: int,
    nats_pid: int,
) -> tuple[float, float, float, float, int]:
    """One rebuild of ``projection``: (seconds, Python, PostgreSQL and NATS CPU seconds,
    version)."""
    nc = await nats.connect(nats_url)
    try:
        backends, stop = ChildrenCpu(postgres), asyncio.Event()
        watch = asyncio.create_task(backends.watch(stop))
        await asyncio.sleep(0)  # the first sample
        before = time.perf_counter(), time.process_time(), cpu_seconds(nats_pid)
        version = await rebuild(
            projection,
            nc=nc,
            database_url=database_url,
            topology=settings.topology,
            swap=False,
        )
        wall, cpu = time.perf_counter() - before[0], time.process_time() - before[1]
        nats_cpu = cpu_seconds(nats_pid) - before[2]
        stop.set()
        await watch
        return wall, cpu, backends.seconds, nats_cpu, version
    finally:
        await nc.close()


async def main(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    with (
        EmbeddedNats(data / "nats").start() as nats_server,
        EmbeddedPostgres(data / "postgres", database="bench").start() as postgres,
    ):
        settings = Settings(
            nats_url=nats_server.url,
            database_url=postgres.url,
            spool_dir=data / "spool",
            data_dir=data,
        )
        await prepare(nats_server.url, postgres.url, settings)
        await fill(nats_server.url, settings.topology, args)
        servers = (nats_server, postgres, settings)
        tune_gc()  # as `budget worker` and `budget projections rebuild` do
        for run in range(args.runs):
            extra = {"events": args.events, "run": run + 1}
            profile = cProfile.Profile() if args.profile and run == 0 else None
            if profile is not None:
                profile.enable()
            version = await measure("alerts", AlertsProjection(), args, extra, *servers)
            if profile is not None:
                profile.disable()
                profile.dump_stats(args.profile)
                pstats.Stats(args.profile).sort_stats("cumulative").print_stats(40)
            count, digest = await alerts_digest(postgres.url, version)
            emit("alerts_raised", count, "alerts", digest=digest, **extra)
            if args.reference:
                await measure("count_only", COUNT_ONLY, args, extra, *servers)


async def measure(
    figure: str,
    projection: Projection,
    args: argparse.Namespace,
    extra: dict[str, int],
    nats_server: EmbeddedNats,
    postgres: EmbeddedPostgres,
    settings: Settings,
) -> int:
    assert nats_server.pid is not None and postgres.pid is not None
    wall, cpu, pg, nats_cpu, version = await replay(
        projection, nats_server.url, postgres.url, settings, postgres.pid, nats_server.pid
    )
    n = args.events
    emit(f"{figure}_events_per_s", n / wall, "events/s", **extra)
    emit(f"{figure}_python_us_per_event", cpu / n * 1e6, "µs", **extra)
    emit(f"{figure}_postgres_us_per_event", pg / n * 1e6, "µs", **extra)
    emit(f"{figure}_nats_us_per_event", nats_cpu / n * 1e6, "µs", **extra)
    return version


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="usage events")
    parser.add_argument("--runs", type=int, default=3, help="rebuilds, back to back")
    parser.add_argument("--days", type=float, default=9.0, help="days the events span")
    parser.add_argument(
        "--spike", type=float, default=0.05, help="share of the events in the last hour"
    )
    parser.add_argument(
        "--user-limit",
        type=Decimal,
        default=Decimal("0.50"),
        help="USD per user per month: low enough that every user crosses 80/95/100 %%",
    )
    parser.add_argument(
        "--until",
        type=datetime.fromisoformat,
        default=utc_now().replace(minute=0, second=0, microsecond=0),
        help="when the last hour ends (default: this hour's start, so runs of the same hour"
        " fill the same log and their digests compare)",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="after each run, replay the same counting without rules (count_only_*)",
    )
    parser.add_argument("--profile", help="write a cProfile of the first run to this file")
    asyncio.run(main(parser.parse_args()))
