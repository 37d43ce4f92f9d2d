"""Benchmark: pre-call budget checks on the embedded stack that ``budget up`` runs (the
enforcer and the workers are separate processes).

Figures (one JSON line each):
- ``local_check_p50_us`` / ``local_check_p99_us``: ``check_budget`` under WARN-only
  policies, answered from the tracker's cached snapshot.
- ``enforced_check_p50_ms`` / ``enforced_check_p99_ms``: one process, one request at a
  time, under a BLOCK policy: NATS request/reply to the enforcer, which reserves the
  estimate in PostgreSQL before answering.
- ``hot_policy_admitted_per_s``: 4 processes checking against one BLOCK policy, each with
  ``--in-flight`` checks outstanding, each admitted call's usage recorded (settling its
  reservation), as a host app would.

Run: ``./run python bench/check.py [--local 50000] [--enforced 3000] [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from decimal import Decimal

from stack import embedded_stack

from budget.config import Settings
from budget.manager import BudgetManager
from budget.tracker import UsageTracker, start_usage_tracker
from events import BudgetPolicy, LimitAction

ESTIMATE = Decimal("0.001")
HOT_USER = "hot"


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    print(
        json.dumps({"figure": figure, "value": round(value, 3), "unit": unit, **extra}), flush=True
    )


def quantiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49], cuts[98]


async def local_checks(tracker: UsageTracker, count: int) -> None:
    await tracker.check_budget("gpt-4o", 1000, "local-user")  # fills the snapshot cache
    timings = []
    for _ in range(count):
        start = time.perf_counter_ns()
        result = await tracker.check_budget("gpt-4o", 1000, "local-user")
        timings.append((time.perf_counter_ns() - start) / 1000)
    assert not result.enforced, "the local phase must see WARN-only policies"
    p50, p99 = quantiles(timings)
    emit("local_check_p50_us", p50, "us", checks=count)
    emit("local_check_p99_us", p99, "us", checks=count)


async def enforced_checks(tracker: UsageTracker, count: int) -> None:
    timings = []
    for _ in range(count):
        start = time.perf_counter()
        result = await tracker.check_budget("gpt-4o", user_id="enforced", estimated_cost=ESTIMATE)
        timings.append((time.perf_counter() - start) * 1000)
        assert result.allowed and result.reservation_id, result.reason
        await tracker.release_reservation(result.reservation_id)
    p50, p99 = quantiles(timings)
    emit("enforced_check_p50_ms", p50, "ms", checks=count)
    emit("enforced_check_p99_ms", p99, "ms", checks=count)


async def hot_client(settings: Settings, seconds: float, in_flight: int) -> None:
    """One of the hot-policy processes: prints ``ready``, waits for a line on stdin."""
    tracker = await start_usage_tracker(settings)
    await tracker.check_budget("gpt-4o", user_id=HOT_USER, estimated_cost=ESTIMATE, reserve=False)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    admitted = refused = 0
    deadline = time.monotonic() + seconds

    async def caller() -> None:
        nonlocal admitted, refused
        while time.monotonic() < deadline:
            result = await tracker.check_budget("gpt-4o", user_id=HOT_USER, estimated_cost=ESTIMATE)
            if not result.allowed:
                refused += 1
                continue
            admitted += 1
            await tracker.record_usage(
                model="gpt-4o",
                provider="openai",
                input_tokens=50,
                output_tokens=50,
                user_id=HOT_USER,
                reservation_id=result.reservation_id,
            )

    await asyncio.gather(*(caller() for _ in range(in_flight)))
    await tracker.close()
    print(json.dumps({"admitted": admitted, "refused": refused}), flush=True)


def hot_policy(settings: Settings, processes: int, seconds: float, in_flight: int) -> None:
    command = [
        sys.executable,
        __file__,
        "--client",
        "--seconds",
        str(seconds),
        "--in-flight",
        str(in_flight),
        "--settings",
        settings.model_dump_json(),
    ]
    clients = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    for client in clients:
        assert client.stdout is not None and client.stdout.readline() == "ready\n"
    start = time.perf_counter()
    for client in clients:
        assert client.stdin is not None
        client.stdin.write("go\n")
        client.stdin.flush()
    outputs = [json.loads(c.communicate()[0].splitlines()[-1]) for c in clients]
    elapsed = time.perf_counter() - start
    admitted = sum(o["admitted"] for o in outputs)
    emit(
        "hot_policy_admitted_per_s",
        admitted / elapsed,
        "checks/s",
        processes=processes,
        in_flight=in_flight,
        refused=sum(o["refused"] for o in outputs),
    )


async def main(args: argparse.Namespace) -> None:
    async with embedded_stack("check", default_limit=None) as (_, settings):
        tracker = await start_usage_tracker(settings)
        manager = BudgetManager(settings, tracker, apply_timeout=60)
        await manager.set_policy(
            BudgetPolicy(name="bench warn", limit_amount=Decimal(1000), action=LimitAction.WARN)
        )
        # The services start in parallel with this process (~1.5 s of CPU each on 2
        # cores): time the checks once they idle, not their start-up.
        await asyncio.sleep(args.settle)
        await local_checks(tracker, args.local)
        for user in ("enforced", HOT_USER):
            await manager.set_policy(
                BudgetPolicy(
                    name=f"bench block {user}",
                    scope="user",
                    scope_key=user,
                    limit_amount=Decimal(10**6),
                    action=LimitAction.BLOCK,
                )
            )
        await enforced_checks(tracker, args.enforced)
        await tracker.close()
        await asyncio.to_thread(hot_policy, settings, args.processes, args.seconds, args.in_flight)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local", type=int, default=50_000, help="local checks to time")
    parser.add_argument("--enforced", type=int, default=3_000, help="enforced checks to time")
    parser.add_argument("--processes", type=int, default=4, help="hot-policy processes")
    parser.add_argument("--seconds", type=float, default=10, help="hot-policy phase length")
    parser.add_argument("--in-flight", type=int, default=32, help="checks per process at once")
    parser.add_argument("--settle", type=float, default=10, help="seconds to let the stack idle")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.client:
        client_settings = Settings.model_validate_json(parsed.settings)
        asyncio.run(hot_client(client_settings, parsed.seconds, parsed.in_flight))
    else:
        asyncio.run(main(parsed))
