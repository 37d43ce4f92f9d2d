"""CPU seconds per process of an embedded stack (``bench/stack.py``), read from ``/proc``:
each worker and service by its name, ``nats`` (the nats-server), ``postgres`` (the
postmaster and every process it runs: backends, background and WAL writers,
checkpointer, autovacuum, and the children it has already reaped) and ``benchmark``
(this process: whatever the benchmark does in it, e.g. producing or rebuilding).

A ``Reading`` is taken before a phase; ``CpuMeter.since`` gives what each process used
from then on. The pids come from the stack's ``stack.json`` at every reading, so a
worker started (or restarted) after the first reading counts from its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CpuMeter", "Reading", "Usage"]

_TICK = os.sysconf("SC_CLK_TCK")
_REAPED_WITHIN = 0.2


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def _cpu(pid: int, *, reaped_children: bool = False) -> float:
    """CPU seconds of ``pid`` (and of its children it has waited for)."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int(_stat(int(entry.name))[1]) == parent:
                    found.append(int(entry.name))
    return found


def _machine() -> float:
    """CPU seconds the whole machine has been busy (``/proc/stat``)."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / _TICK


@dataclass(frozen=True)
class Reading:
    processes: dict[str, tuple[int, float]]
    """name -> (pid, CPU seconds so far)"""
    at: float
    machine: float


@dataclass
class Usage:
    """CPU seconds each process used in a phase of ``seconds``; ``others``: what the rest
    of the machine used in ``window`` (the phase and the wait for its exited processes):
    other people's work skews the figures."""

    cpu: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    others: float = 0.0
    window: float = 0.0

    def per_unit(self, count: int) -> dict[str, float]:
        """µs per event (or request) of each process that ran, largest first."""
        per = {k: v * 1e6 / max(count, 1) for k, v in self.cpu.items() if v > 0}
        return dict(sorted(per.items(), key=lambda kv: -kv[1]))

    @property
    def cores_busy(self) -> float:
        return sum(self.cpu.values()) / self.seconds if self.seconds else 0.0

    def others_cores_busy(self, besides: float = 0.0) -> float:
        """Cores the rest of the machine kept busy, less ``besides`` CPU seconds of it that
        were the benchmark's (its client processes)."""
        return max(self.others - besides, 0.0) / self.window if self.window else 0.0


class CpuMeter:
    """Readings of the stack that runs on ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.state_file = data_dir / "stack.json"

    def reading(self) -> Reading:
        state = json.loads(self.state_file.read_text())
        pids: dict[str, int] = {**state["workers"], "nats": state["nats_pid"]}
        processes = {name: (pid, _cpu(pid, reaped_children=True)) for name, pid in pids.items()}
        postmaster: int = state["postgres_pid"]
        processes["postgres"] = (
            postmaster,
            _cpu(postmaster, reaped_children=True)
            + sum(_cpu(pid) for pid in _children(postmaster)),
        )
        processes["benchmark"] = (os.getpid(), time.process_time())
        return Reading(processes, time.perf_counter(), _machine())

    def since(self, before: Reading) -> Usage:
        ended = time.perf_counter()
        # A backend that has just exited (a connection the phase closed) shows in no
        # process until the postmaster reaps it (measured: its CPU missing for <50 ms).
        time.sleep(_REAPED_WITHIN)
        after = self.reading()
        cpu = {}
        for name, (pid, seconds) in after.processes.items():
            then = before.processes.get(name)
            # A process started since ``before`` (a pid not seen then) counts from its start.
            cpu[name] = seconds - then[1] if then is not None and then[0] == pid else seconds
        ours = sum(cpu.values())
        machine = after.machine - before.machine
        return Usage(cpu, ended - before.at, max(machine - ours, 0.0), after.at - before.at)

    @contextlib.contextmanager
    def measure(self) -> Iterator[Usage]:
        """The block's ``Usage``, filled in when the block ends."""
        usage = Usage()
        before = self.reading()
        yield usage
        measured = self.since(before)
        usage.cpu, usage.seconds = measured.cpu, measured.seconds
        usage.others, usage.window = measured.others, measured.window

    async def quiet(self, limit: float, within: float) -> None:
        """Wait (up to ``within`` seconds) until the rest of the machine keeps fewer than
        ``limit`` cores busy for a second: other people's work on these two cores would
        be measured as ours."""
        deadline = time.monotonic() + within
        while True:
            before = self.reading()
            await asyncio.sleep(1)
            others = self.since(before).others_cores_busy()
            if others < limit or time.monotonic() > deadline:
                return
            print(
                f"# waiting: the rest of the machine keeps {others:.2f} cores busy", file=sys.stderr
            )
