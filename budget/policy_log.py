"""How far the policy log goes: the stream sequence of the newest policy event (the last
message on the subjects the policies projection applies), read from JetStream, so a
tracker can tell whether a cached snapshot predates a policy change.

A change is promised to every tracker once ``POLICY_NEWS_WITHIN`` seconds have passed
since its event was stored (``set_policy`` waits that long): a check trusts a cached
snapshot only if the log's end was read no more than that long before the check began
and the snapshot covers it. Reads are shared, one at a time: a busy tracker reads the log
at most about once per ``POLICY_NEWS_WITHIN``, an idle one on its next check. A read that
fails is not retried for ``RETRY_AFTER_FAILURE`` seconds (checks ask the enforcer
meanwhile), so failing reads never pile up.
"""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from budget.rpc import Unanswered
from events import Topology
from events.policy import POLICY_CHANGES

__all__ = ["POLICY_NEWS_WITHIN", "RETRY_AFTER_FAILURE", "PolicyLog"]

POLICY_NEWS_WITHIN = 0.1
"""Seconds; the same constant on the writing and the checking side."""
RETRY_AFTER_FAILURE = 1.0
"""Seconds after a failed read during which ``end`` fails at once."""


class PolicyLog:
    def __init__(self, topology: Topology, *, timeout: float) -> None:
        self.topology = topology
        self.timeout = timeout
        self.nc: Client | None = None
        self.known = 0
        """The newest policy event's stream sequence as last read (0: none yet)."""
        self._read_at = -float("inf")
        """When (monotonic) the read that gave ``known`` was sent."""
        self._reading: asyncio.Task[None] | None = None
        self._reading_sent = -float("inf")
        self._failed: tuple[float, str] | None = None
        """When (monotonic) the last read failed, and why; None after a good read."""

    def use(self, nc: Client) -> None:
        self.nc = nc

    async def end(self) -> int:
        """The newest policy event's stream sequence, read no earlier than
        ``POLICY_NEWS_WITHIN`` seconds ago. Raises ``Unanswered`` (saying why) when it
        cannot be read now: the read fails, the last one failed under
        ``RETRY_AFTER_FAILURE`` seconds ago, or the read in flight was sent too long
        before this check to count for it."""
        began = time.monotonic()
        if began - self._read_at <= POLICY_NEWS_WITHIN:
            return self.known
        if self._failed is not None and began - self._failed[0] < RETRY_AFTER_FAILURE:
            raise Unanswered(self._failed[1])
        if self._reading is None or self._reading.done():
            self._reading_sent = began
            self._reading = asyncio.create_task(self._read(began))
            self._reading.add_done_callback(self._finished)
        elif began - self._reading_sent > POLICY_NEWS_WITHIN:
            pending = began - self._reading_sent
            raise Unanswered(f"its last read has not been answered for {pending:.1f} s")
        await asyncio.shield(self._reading)
        return self.known

    def end_if_fresh(self) -> int | None:
        """``end()`` when it needs no read (the last one is recent enough), else None."""
        if time.monotonic() - self._read_at <= POLICY_NEWS_WITHIN:
            return self.known
        return None

    def close(self) -> None:
        """Stop the read in flight, if any."""
        if self._reading is not None:
            self._reading.cancel()

    def _finished(self, reading: asyncio.Task[None]) -> None:
        """The next read may start. (A failed read's exception counts as retrieved even
        if all its waiters were cancelled: ``asyncio.shield`` marks it so.)"""
        if self._reading is reading:
            self._reading = None

    async def _read(self, sent: float) -> None:
        try:
            if self.nc is None or not self.nc.is_connected:
                raise Unanswered("not connected to NATS")
            js = self.nc.jetstream(timeout=self.timeout)
            ends = [self._last(js, change.SUBJECT) for change in POLICY_CHANGES]
            seq = max(await asyncio.gather(*ends))
        except (NatsError, TimeoutError, Unanswered) as exc:
            why = str(exc) if isinstance(exc, Unanswered) else repr(exc)
            self._failed = (time.monotonic(), why)
            raise Unanswered(why) from None
        self.known, self._read_at, self._failed = seq, sent, None

    async def _last(self, js: JetStreamContext, suffix: str) -> int:
        """The stream sequence of the last event on exactly this subject (0: none): other
        messages under ``<prefix>.events.policy.`` are no policy change (the policies
        projection never applies them) and must not make every snapshot look stale."""
        try:
            # A direct get: the one JetStream read a host credential may do (docs/security.md).
            found = await js.get_last_msg(
                self.topology.event_stream.name, self.topology.event_subject(suffix), direct=True
            )
        except NotFoundError:
            return 0
        return found.seq or 0
