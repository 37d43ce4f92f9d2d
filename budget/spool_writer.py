"""Changes to the spool made off the event loop, many to one transaction.

A spool commit is fsync'd (some milliseconds): one per event, on the loop, would stall
the host app for every event recorded while NATS is down, and for half a minute when
8192 events in flight to a hung server expire together. Changes handed over within
``linger`` seconds, and all those handed over while a commit runs, go in one commit, in
a worker thread (on the loop once the interpreter is exiting, when threads are no longer
given out). A commit that fails (a full disk) leaves its changes in memory, tried again
with a growing pause; each failure is logged as an error.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from budget.spool import Spool, SpooledEvent

__all__ = ["SpoolWriter"]

log = logging.getLogger(__name__)

RETRY_FIRST = 0.5
RETRY_MAX = 10.0
"""Seconds between tries of a commit that failed: doubling from the first to the most."""


@dataclass(slots=True)
class _Changes:
    put: list[SpooledEvent] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    bury: list[tuple[SpooledEvent, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.put or self.remove or self.bury)

    @property
    def held(self) -> int:
        return len(self.put) + len(self.bury)

    def then(self, later: _Changes) -> _Changes:
        return _Changes(self.put + later.put, self.remove + later.remove, self.bury + later.bury)

    def write(self, spool: Spool) -> None:
        spool.update(put=self.put, remove=self.remove, bury=self.bury)


class SpoolWriter:
    """Changes to ``spool`` (events put in, removed, buried in its dead letters), written
    by one task at a time on the running loop; ``after_commit`` is called on the loop
    after each commit, done or failed."""

    def __init__(self, spool: Spool, *, linger: float, after_commit: Callable[[], None]) -> None:
        self._spool = spool
        self._linger = linger
        self._after_commit = after_commit
        self._pending = _Changes()
        self._writing = _Changes()
        self._last = _Changes()
        """What ``write_all`` commits: written by none (it is not idle) until it is done."""
        self._task: asyncio.Task[None] | None = None
        self.failure: Exception | None = None
        """The last commit's error while commits fail, else None."""
        self.changes = 0
        """How many changes (puts, removals, burials) were handed over so far."""
        self._written = 0
        """Of them, how many the last successful commit had written (in order: changes
        are committed oldest first)."""

    @property
    def held(self) -> int:
        """Events in memory until a commit puts them in the spool (or its dead letters)."""
        return self._pending.held + self._writing.held + self._last.held

    @property
    def idle(self) -> bool:
        """Nothing waits to be written."""
        return not (self._pending or self._writing or self._last)

    def written(self, changes: int) -> bool:
        """Whether the first ``changes`` changes handed over are written (or taken back)."""
        return self._written >= changes or self.idle

    def put(self, events: list[SpooledEvent]) -> None:
        if events:
            self._pending.put += events
            self._handed()

    def remove(self, event_ids: list[str]) -> None:
        if event_ids:
            self._pending.remove += event_ids
            self._handed()

    def take_back(self) -> list[SpooledEvent]:
        """While commits fail, the events waiting to be spooled, taken back (NATS may take
        them now); none while commits work."""
        if self.failure is None:
            return []
        events, self._pending.put = self._pending.put, []
        return events

    def bury(self, event: SpooledEvent, reason: str) -> None:
        """Into the spool's dead letters (out of the spool if there)."""
        self._pending.bury.append((event, reason))
        self._handed()

    async def stop(self) -> None:
        """Stop writing in the background; what is left stays for ``write_now``."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def write_now(self, more: list[SpooledEvent]) -> None:
        """Commit what is left, with ``more`` events, here (no loop needed; a commit of a
        task that never ended is made again); raises if that fails, and it is then lost."""
        changes, upto = self._take_all(more)
        if changes:
            changes.write(self._spool)
        self._written = upto

    async def write_all(self, more: list[SpooledEvent]) -> None:
        """``write_now`` off the loop, once ``stop`` has stopped the background writing:
        the commit may wait seconds for another process's, and the loop runs on."""
        self._last, upto = self._take_all(more)
        try:
            if self._last:
                await self._commit(self._last)
        finally:
            self._last = _Changes()
        self._written = max(self._written, upto)  # changes handed over meanwhile wait

    def _take_all(self, more: list[SpooledEvent]) -> tuple[_Changes, int]:
        """What is left, with ``more`` events, out of memory; how many changes it covers."""
        changes = self._writing.then(self._pending).then(_Changes(put=more))
        self._writing, self._pending = _Changes(), _Changes()
        return changes, self.changes

    def _handed(self) -> None:
        self.changes += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._write_soon())

    async def _write_soon(self) -> None:
        retry = RETRY_FIRST
        try:
            await asyncio.sleep(self._linger)
            while self._pending:
                upto = self.changes
                self._writing, self._pending = self._pending, _Changes()
                try:
                    await self._commit(self._writing)
                except Exception as exc:
                    self._fail(exc, retry)
                    self._pending = self._writing.then(self._pending)
                    self._writing = _Changes()
                    self._after_commit()
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, RETRY_MAX)
                    continue
                self._writing = _Changes()
                self._written = upto
                retry = RETRY_FIRST
                self._recovered()
                self._after_commit()
        finally:
            # Cancelled mid-commit: whether it committed is unknown; written again, a put
            # or a removal changes nothing more.
            self._pending = self._writing.then(self._pending)
            self._writing = _Changes()
            self._task = None

    async def _commit(self, changes: _Changes) -> None:
        write = functools.partial(changes.write, self._spool)
        try:
            done = asyncio.get_running_loop().run_in_executor(None, write)
        except RuntimeError:  # the interpreter is exiting: no thread for it
            write()
            return
        await done

    def _fail(self, exc: Exception, retry: float) -> None:
        self.failure = exc
        log.error(
            "the spool %s failed (%s: %s): %d events wait in memory to be spooled; tried again"
            " in %ss",
            self._spool.path,
            type(exc).__name__,
            exc,
            self.held,
            retry,
        )

    def _recovered(self) -> None:
        if self.failure is not None:
            self.failure = None
            log.warning("the spool works again; the events waiting in memory are spooled")
