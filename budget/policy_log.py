"""How far the policy log goes: the stream sequence of the newest policy event, read from
JetStream, so a tracker can tell whether a cached snapshot predates a policy change.

A change is promised to every tracker once ``POLICY_NEWS_WITHIN`` seconds have passed
since its event was stored (``set_policy`` waits that long): a check trusts a cached
snapshot only if the log's end was read no more than that long before the check began
and the snapshot covers it. Reads are shared: a busy tracker reads the log at most about
once per ``POLICY_NEWS_WITHIN``, an idle one on its next check.
"""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from budget.rpc import Unanswered
from events import Topology

__all__ = ["POLICY_NEWS_WITHIN", "PolicyLog"]

POLICY_NEWS_WITHIN = 0.1
"""Seconds; the same constant on the writing and the checking side."""


class PolicyLog:
    def __init__(self, topology: Topology, *, timeout: float) -> None:
        self.topology = topology
        self.timeout = timeout
        self.nc: Client | None = None
        self.known = 0
        """The newest policy event's stream sequence as last read (0: none yet)."""
        self._read_at = -float("inf")
        """When (monotonic) the read that gave ``known`` was sent."""
        self._reading: asyncio.Future[None] | None = None
        self._reading_sent = -float("inf")

    def use(self, nc: Client) -> None:
        self.nc = nc

    async def end(self) -> int:
        """The newest policy event's stream sequence, read no earlier than
        ``POLICY_NEWS_WITHIN`` seconds ago; raises ``Unanswered`` if it cannot be read."""
        began = time.monotonic()
        if began - self._read_at <= POLICY_NEWS_WITHIN:
            return self.known
        if self._reading is None or began - self._reading_sent > POLICY_NEWS_WITHIN:
            self._reading_sent = began
            self._reading = asyncio.ensure_future(self._read(began))
        await asyncio.shield(self._reading)
        return self.known

    async def _read(self, sent: float) -> None:
        stream = self.topology.event_stream.name
        subject = self.topology.event_subject("policy.>")
        try:
            if self.nc is None or not self.nc.is_connected:
                raise Unanswered("not connected to NATS")
            js = self.nc.jetstream(timeout=self.timeout)
            try:
                seq = (await js.get_last_msg(stream, subject)).seq or 0
            except NotFoundError:
                seq = 0  # no policy was ever set
        except (NatsError, TimeoutError) as exc:
            raise Unanswered(f"cannot read the policy log ({exc!r})") from None
        finally:
            if self._reading_sent == sent:
                self._reading = None
        if sent > self._read_at:
            self.known, self._read_at = seq, sent
