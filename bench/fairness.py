"""Benchmark: one greedy host against one well-behaved host, on the embedded stack that
``budget up`` runs (the enforcer and the query service are separate processes, limiting
each caller to ``caller_rate`` / ``caller_burst`` / ``caller_in_flight``).

The polite host checks at a steady ``--rate`` under a BLOCK policy (a reservation each,
released at once, as bench/check.py does), first alone, then while the greedy host (its own
process and caller) floods the enforcer with checks and the query service with policy
queries, ``--in-flight`` of each outstanding, never waiting for ``retry_after``.

Figures (one JSON line each): ``polite_alone_p50_ms`` / ``polite_alone_p99_ms``,
``polite_loaded_p50_ms`` / ``polite_loaded_p99_ms``, ``polite_p99_ratio`` (loaded over
alone; the target is at most 2), the CPU each process of the stack used during the loaded
phase (``loaded_cpu_<process>``, % of a core) and what the enforcer and the query service
spent per greedy request (``<service>_cpu_per_greedy_request_us``: nearly all of those are
refusals), and the greedy host's ``greedy_checks_per_s`` / ``greedy_queries_per_s``
(answered, with how many of them were refusals).

Run: ``./run python bench/fairness.py [--seconds 15] [--rate 50] [--in-flight 200]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

import nats
from stack import embedded_stack

from budget.config import Settings
from budget.manager import BudgetManager
from budget.tracker import UsageTracker, start_usage_tracker
from events import BudgetPolicy, LimitAction
from events.queries import QUERY_POLICIES, PoliciesQuery
from events.rpc import RPC_CHECK, CheckRequest

ESTIMATE = Decimal("0.001")
POLITE, GREEDY = "polite-host", "greedy-host"


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    print(
        json.dumps({"figure": figure, "value": round(value, 3), "unit": unit, **extra}), flush=True
    )


def _stat(pid: int) -> tuple[int, float]:
    """A process's parent and CPU seconds so far (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(data_dir: Path) -> dict[str, float]:
    """CPU seconds so far of this process's descendants (named by their command) and of
    the stack's PostgreSQL (the postmaster and its backends, found by its pid file)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stats[int(entry.name)] = _stat(int(entry.name))
    postmaster = next(data_dir.rglob("postmaster.pid"), None)
    roots = {os.getpid(): "bench"}
    if postmaster is not None:
        roots[int(postmaster.read_text().split()[0])] = "postgres"
    names = dict(roots)
    for _ in range(4):  # a few generations deep
        for pid, (parent, _) in stats.items():
            if parent in names and pid not in names:
                names[pid] = names[parent] if names[parent] == "postgres" else _name(pid)
    totals: dict[str, float] = {}
    for pid, name in names.items():
        if pid in stats:
            totals[name] = totals.get(name, 0.0) + stats[pid][1]
    return totals


def _name(pid: int) -> str:
    with contextlib.suppress(OSError):
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        text = " ".join(a.decode(errors="replace") for a in args)
        for known, name in (
            ("--greedy", "greedy"),
            ("services.cli enforcer", "enforcer"),
            ("services.cli query-service", "query-service"),
            ("nats-server", "nats-server"),
        ):
            if known in text:
                return name
    return "other"


def quantiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49], cuts[98]


async def polite_checks(tracker: UsageTracker, seconds: float, rate: float) -> list[float]:
    """Check (and release) every 1/``rate`` s for ``seconds``; each check's milliseconds."""
    timings: list[float] = []
    start = time.perf_counter()
    for i in range(int(seconds * rate)):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        began = time.perf_counter()
        result = await tracker.check_budget("gpt-4o", user_id=POLITE, estimated_cost=ESTIMATE)
        timings.append((time.perf_counter() - began) * 1000)
        assert result.allowed and result.enforced and result.reservation_id, result.reason
        await tracker.release_reservation(result.reservation_id)
    return timings


async def greedy_host(settings: Settings, in_flight: int) -> None:
    """The greedy process: prints ``ready``, floods from the line ``go`` until ``stop``,
    then prints what it got."""
    nc = await nats.connect(settings.nats_url)
    topology = settings.topology
    floods = {
        "checks": (
            topology.rpc_subject(RPC_CHECK, caller=GREEDY),
            CheckRequest(
                model="gpt-4o", user_id=GREEDY, estimated_cost=ESTIMATE, ttl_seconds=60
            ).model_dump_json(),
        ),
        "queries": (
            topology.rpc_subject(QUERY_POLICIES, caller=GREEDY),
            PoliciesQuery().model_dump_json(),
        ),
    }
    counts = {kind: {"answered": 0, "refused": 0, "unanswered": 0} for kind in floods}
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    stop = asyncio.Event()

    async def asker(kind: str) -> None:
        subject, payload = floods[kind]
        data = payload.encode()
        while not stop.is_set():
            try:
                reply = await nc.request(subject, data, timeout=5)
            except Exception:
                counts[kind]["unanswered"] += 1
                continue
            counts[kind]["answered"] += 1
            if reply.data.startswith(b'{"error"'):
                counts[kind]["refused"] += 1

    tasks = [asyncio.create_task(asker(kind)) for kind in floods for _ in range(in_flight)]
    started = time.perf_counter()
    await asyncio.to_thread(sys.stdin.readline)
    stop.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    await nc.close()
    print(json.dumps({"seconds": elapsed, **counts}), flush=True)


async def main(args: argparse.Namespace) -> None:
    async with embedded_stack("fairness", default_limit=None) as (info, settings):
        services = await start_usage_tracker(settings)  # the services' own caller: exempt
        manager = BudgetManager(settings, services, apply_timeout=60)
        for user in (POLITE, GREEDY):
            await manager.set_policy(
                BudgetPolicy(
                    name=f"bench block {user}",
                    scope="user",
                    scope_key=user,
                    limit_amount=Decimal(10**6),
                    action=LimitAction.BLOCK,
                )
            )
        await services.close()
        await asyncio.sleep(args.settle)  # time the checks once the services idle
        polite = await start_usage_tracker(
            settings.model_copy(
                update={"service_name": POLITE, "spool_dir": settings.spool_dir / POLITE}
            )
        )
        await polite_checks(polite, 2, args.rate)  # warm: snapshot, connections
        alone = await polite_checks(polite, args.seconds, args.rate)
        greedy = await asyncio.create_subprocess_exec(
            *(sys.executable, __file__, "--greedy", "--in-flight", str(args.in_flight)),
            *("--settings", settings.model_dump_json()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert greedy.stdin is not None and greedy.stdout is not None
        assert await greedy.stdout.readline() == b"ready\n"
        greedy.stdin.write(b"go\n")
        await asyncio.sleep(1)  # the flood under way
        cpu_before, started = cpu_by_process(info.data_dir), time.perf_counter()
        loaded = await polite_checks(polite, args.seconds, args.rate)
        cpu_after, elapsed = cpu_by_process(info.data_dir), time.perf_counter() - started
        output, _ = await greedy.communicate(b"stop\n")
        flooded = json.loads(output.decode().splitlines()[-1])
        await polite.close()
    (alone_p50, alone_p99), (loaded_p50, loaded_p99) = quantiles(alone), quantiles(loaded)
    emit("polite_alone_p50_ms", alone_p50, "ms", checks=len(alone), rate=args.rate)
    emit("polite_alone_p99_ms", alone_p99, "ms", checks=len(alone), rate=args.rate)
    emit("polite_loaded_p50_ms", loaded_p50, "ms", checks=len(loaded), rate=args.rate)
    emit("polite_loaded_p99_ms", loaded_p99, "ms", checks=len(loaded), rate=args.rate)
    emit("polite_p99_ratio", loaded_p99 / alone_p99, "x", target="<= 2")
    busy = {name: (s - cpu_before.get(name, 0.0)) / elapsed for name, s in cpu_after.items()}
    for name, share in sorted(busy.items()):
        emit(f"loaded_cpu_{name}", share * 100, "% of a core")
    for service, kind in (("enforcer", "checks"), ("query-service", "queries")):
        asked = flooded[kind]["answered"] / flooded["seconds"]
        emit(f"{service}_cpu_per_greedy_request_us", busy[service] / asked * 1e6, "us")
    for kind in ("checks", "queries"):
        counts = flooded[kind]
        emit(
            f"greedy_{kind}_per_s",
            counts["answered"] / flooded["seconds"],
            f"{kind}/s",
            refused=counts["refused"],
            unanswered=counts["unanswered"],
            in_flight=args.in_flight,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15, help="length of each phase")
    parser.add_argument("--rate", type=float, default=50, help="the polite host's checks/s")
    parser.add_argument("--in-flight", type=int, default=200, help="greedy requests of each kind")
    parser.add_argument("--settle", type=float, default=10, help="seconds to let the stack idle")
    parser.add_argument("--greedy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.greedy:
        asyncio.run(greedy_host(Settings.model_validate_json(parsed.settings), parsed.in_flight))
    else:
        asyncio.run(main(parsed))
