"""Benchmark: the Python function calls ``budget.instrument`` adds to a provider SDK call,
counted by ``cProfile`` side by side with the bare call, as ``bench/instrument.py`` runs
them (same cases, mock transport, embedded stack, WARN policy: the local check path).

A count, not a time: the same on a busy or a quiet VM, so a change to the instrumented
path's footprint shows even where ``bench/instrument.py``'s CPU figures drown in the
VM's noise. (The stack's other processes are not counted; the measuring process's
publishing and acks are.)

Figures (one JSON line each), per case: ``<case>_bare_calls``, ``<case>_instrumented_calls``,
``<case>_added_calls`` (function calls per SDK call, C functions included), then
``<case>_added_calls_by_module``: the added calls of the modules that add the most (``C``:
the C functions).

Run: ``./run python bench/instrument_calls.py [--calls 400] [--cases NAME ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import json
import pstats
import sys
import sysconfig
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

from instrument import ASYNC_CASES, repeated
from stack import embedded_stack

import budget
from budget.config import Settings
from budget.manager import BudgetManager
from budget.tracker import UsageTracker, start_usage_tracker
from events import BudgetPolicy, LimitAction

ROOT = str(Path(__file__).resolve().parent.parent)
STDLIB = sysconfig.get_paths()["stdlib"]


async def profiled(run: Callable[[int], Awaitable[None]], calls: int) -> pstats.Stats:
    profile = cProfile.Profile()
    profile.enable()
    await run(calls)
    profile.disable()
    return pstats.Stats(profile)


def by_module(stats: pstats.Stats) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for (file, _, _), (_, calls, *_) in stats.stats.items():  # type: ignore[attr-defined]
        counts[_shown(file)] += calls
    return counts


def _shown(file: str) -> str:
    """A module's path as short as says which: from the package root, "C" for builtins."""
    if file == "~":
        return "C"
    for root in ("site-packages/", f"{ROOT}/", f"{STDLIB}/"):
        file = file.split(root)[-1]
    return file


async def count_case(name: str, tracker: UsageTracker, calls: int) -> None:
    case, make = ASYNC_CASES[name]
    bare = repeated(case, make())
    instrumented = repeated(case, budget.instrument(make(), tracker=tracker, user_id="bench"))
    await bare(calls // 4)  # warm both: imports, caches, the first snapshot
    await instrumented(calls // 4)
    await tracker.flush()
    bare_stats = await profiled(bare, calls)
    instrumented_stats = await profiled(instrumented, calls)
    await tracker.flush()
    per_call = {
        "bare": bare_stats.total_calls / calls,  # type: ignore[attr-defined]
        "instrumented": instrumented_stats.total_calls / calls,  # type: ignore[attr-defined]
    }
    per_call["added"] = per_call["instrumented"] - per_call["bare"]
    for side, value in per_call.items():
        line = {"figure": f"{name}_{side}_calls", "value": round(value, 1), "calls": calls}
        print(json.dumps(line), flush=True)
    added = by_module(instrumented_stats)
    added.subtract(by_module(bare_stats))
    top = {module: round(n / calls, 1) for module, n in added.most_common(12)}
    print(json.dumps({"figure": f"{name}_added_calls_by_module", "value": top}), flush=True)


async def measure(args: argparse.Namespace) -> None:
    tracker = await start_usage_tracker(Settings.model_validate_json(args.settings))
    for name in args.cases:
        await count_case(name, tracker, args.calls)
    await tracker.close()


async def main(args: argparse.Namespace) -> None:
    async with embedded_stack("instrument-calls", default_limit=None) as (_, settings):
        tracker = await start_usage_tracker(settings)
        manager = BudgetManager(settings, tracker, apply_timeout=60)
        await manager.set_policy(
            BudgetPolicy(name="bench warn", limit_amount=Decimal(10**6), action=LimitAction.WARN)
        )
        await tracker.close()
        command = [sys.executable, __file__, "--measure", settings.model_dump_json()]
        command += ["--calls", str(args.calls), "--cases", *args.cases]
        child = await asyncio.create_subprocess_exec(*command)
        assert await child.wait() == 0, "the measuring process failed"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400, help="SDK calls counted per side")
    parser.add_argument("--cases", nargs="+", choices=list(ASYNC_CASES), default=list(ASYNC_CASES))
    parser.add_argument("--measure", dest="settings", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    asyncio.run(measure(parsed) if parsed.settings else main(parsed))
