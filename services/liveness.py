"""Whether a service's loops are actually turning, not merely whether its process is up.

A service registers each loop it depends on (the enforcer's decision loop, the notifier's
channel loops, the query service's loop per kind of question and its database probe)
and runs it through ``Loop.start``; each unit of work runs inside
``Loop.turn``. A loop is healthy while its task runs, no single turn has taken longer
than ``stall_after``, and it has not been failing (``Loop.failing``: e.g. retrying a
database it cannot reach) for longer than ``stall_after`` without a turn completing:
waiting for work is healthy; a dead task, one stuck on one item, or one retrying without
getting anywhere is not. The heartbeat file and the services' answers
(``services.replies``) report it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

from budget.waits import wait_set

__all__ = ["HEARTBEAT_EVERY", "Liveness", "Loop", "heartbeat"]

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 5.0
"""Seconds between touches of a healthy service's heartbeat file."""


class Loop:
    """One loop of a service."""

    def __init__(self, name: str, *, stall_after: float) -> None:
        self.name = name
        self.stall_after = stall_after
        self.turns = 0
        self._task: asyncio.Task[Any] | None = None
        self._busy_since: float | None = None
        self._failing_since: float | None = None
        self._failure = ""

    def start(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` as this loop's task."""
        self._task = asyncio.create_task(work, name=self.name)
        return self._task

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """One unit of work: the loop is stalled while it takes longer than ``stall_after``;
        once it completes, the loop is no longer failing."""
        self._busy_since = time.monotonic()
        try:
            yield
            self.recovered()
        finally:
            self._busy_since = None
            self.turns += 1

    def failing(self, why: str) -> bool:
        """The loop's work failed and is being retried: the loop is stalled once it has
        been failing for longer than ``stall_after`` (until a turn completes). Whether
        this failure is the first of a run (to log an outage once, not every retry)."""
        first = self._failing_since is None
        if first:
            self._failing_since = time.monotonic()
        self._failure = why
        return first

    def recovered(self) -> None:
        """The loop gets on again (or waits for work, which is healthy too)."""
        self._failing_since = None

    def problem(self, *, failing: bool = True, why: bool = True) -> str | None:
        """Why this loop is not healthy, or None. ``failing=False``: not for failing and
        retrying (a dependency down), only for a loop dead or stuck in one turn.
        ``why=False``: without the failure's or the death's own text (``Liveness.problems``)."""
        task = self._task
        if task is None:
            return f"{self.name} not started"
        if task.done():
            if task.cancelled():
                return f"{self.name} stopped"
            exc = task.exception()
            if exc is None:
                return f"{self.name} ended"
            return f"{self.name} died: {exc!r}" if why else f"{self.name} died"
        busy_since = self._busy_since
        if busy_since is not None:
            busy = time.monotonic() - busy_since
            # a turn that retries a dependency (``failing`` meanwhile) waits, not stuck
            retrying = self._failing_since is not None
            if busy > self.stall_after and (failing or not retrying):
                return f"{self.name} stalled: one turn has taken {busy:.0f}s"
        failing_since = self._failing_since
        if failing and failing_since is not None:
            for_long = time.monotonic() - failing_since
            if for_long > self.stall_after:
                stalled = f"{self.name} stalled: failing for {for_long:.0f}s"
                return f"{stalled}: {self._failure}" if why else stalled
        return None


class Liveness:
    """The loops of one service (or of every service in one process)."""

    def __init__(self) -> None:
        self._loops: list[Loop] = []

    def loop(self, name: str, *, stall_after: float) -> Loop:
        """A new loop, reported from now on."""
        loop = Loop(name, stall_after=stall_after)
        self._loops.append(loop)
        return loop

    def problems(self, *, failing: bool = True, why: bool = True) -> list[str]:
        """What is wrong with the loops; empty when every one is turning. ``failing=False``:
        only loops dead or stuck in one turn (not those retrying a dependency that is down,
        which a restart cannot bring back). ``why=False``: without the failures' own texts
        (libpq's names the database's address and role), for an asker over NATS (a host
        app); the log says them."""
        found = (loop.problem(failing=failing, why=why) for loop in self._loops)
        return [p for p in found if p is not None]


async def heartbeat(
    path: Path | None,
    stop: asyncio.Event,
    liveness: Liveness,
    every: float = HEARTBEAT_EVERY,
    *,
    alive: Path | None = None,
) -> None:
    """Touch ``path`` while every loop of ``liveness`` turns, for a container health check:
    a dead or stalled loop, one failing for long (its database down), or an event loop that
    no longer runs at all, lets the file age. Touch ``alive`` while no loop is dead or stuck
    in one turn, whatever the dependencies do: ``budget up`` restarts a process whose
    ``alive`` file ages (hung), not one waiting for a database to come back."""
    reported: list[str] = []
    # The first look after one interval: a service starts its loops after this task,
    # which would otherwise log each "not started" once at every start.
    while not await wait_set(stop, every):
        problems = liveness.problems()
        touched = [
            file
            for file, clear in ((path, not problems), (alive, not liveness.problems(failing=False)))
            if file is not None and clear
        ]
        if touched:
            await asyncio.to_thread(_touch, touched)
        if problems and problems != reported:
            log.error("not healthy: %s", "; ".join(problems))
        reported = problems


def _touch(paths: list[Path]) -> None:
    for path in paths:
        path.touch()
