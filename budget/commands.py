"""What the manager and the alert engine share: publishing a change (a policy, a rule, an
acknowledgement) and waiting until the projection that reads it has applied it, so the
caller reads its own write; reads go through ``queries``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import RawStreamMsg
from nats.js.errors import BadRequestError, NotFoundError

from budget.config import Settings, shown_url
from budget.natsconn import permitted
from budget.queries import NotApplied, Queries, RpcQueries
from budget.tracker import UsageTracker
from events import Event, encode, headers_for
from events.envelope import new_event_id

__all__ = ["ChangeClient", "ClockAhead", "Contended"]

EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code when that expectation fails: another change landed first."""
CREATE_ATTEMPTS = 50


class Contended(RuntimeError):
    """A create did not go through, and nothing changed: it lost the race to other changes
    of its kind every time it tried, or their worker is behind (whether the thing exists
    cannot be told until it has applied them)."""


class ClockAhead(RuntimeError):
    """This host's clock is so far ahead of the NATS server's that the projections
    dead-letter the change it just stored (``max_clock_skew``): nothing changed."""


class ChangeClient:
    projection: str
    """The projection that applies this client's changes."""
    settle: float = 0.0
    """Seconds after a change is stored before it is promised to every reader that
    caches it (the trackers' policy snapshots: ``POLICY_NEWS_WITHIN``)."""

    def __init__(
        self,
        settings: Settings,
        tracker: UsageTracker,
        *,
        queries: Queries | None = None,
        apply_timeout: float = 10.0,
    ):
        """``queries``: where reads go; by default the query service, over the tracker's
        NATS connection."""
        self.settings = settings
        self.tracker = tracker
        self.queries = queries or RpcQueries(settings, lambda: tracker.publisher.client)
        self.apply_timeout = apply_timeout

    async def _publish_and_wait(self, event: Event) -> None:
        await self._wait(await self._publish(event))

    async def _publish_new(self, event: Event, exists: Callable[[], Awaitable[bool]]) -> bool:
        """Publish ``event`` and wait as ``_publish_and_wait`` does, unless ``exists()``
        (False then). Of creations of one thing at once, exactly one publishes.

        Optimistic concurrency on the event's subject: take its last stream sequence, let
        the projection apply up to it, ask ``exists()``, and publish only if that sequence
        is still the subject's last (JetStream refuses otherwise, and we look again). The
        subject is shared by every change of its kind, so creations of different things at
        once retry too; each retry means another change was stored, so the loop ends."""
        for _ in range(CREATE_ATTEMPTS):
            last = await self._last_sequence(event)
            try:
                await self.queries.wait_applied(self.projection, last, self.apply_timeout)
            except NotApplied:
                # not this change's (it is not stored): saying "stored but not applied" would
                # make the caller wait for a change that never comes
                raise Contended(
                    f"nothing changed: the {self.projection} worker has not applied the"
                    f" changes before this one within {self.apply_timeout:.0f}s, so whether"
                    f" it exists cannot be told; is `budget worker {self.projection}` (or"
                    " `budget up`) running? Retry once it has caught up"
                ) from None
            if await exists():
                return False
            # A fresh id each attempt: JetStream may keep the id of a message it refused,
            # and a retry under it would be acknowledged as a duplicate, stored nowhere.
            attempt = event.model_copy(update={"event_id": new_event_id()})
            try:
                stored = await self._publish(attempt, expected_last=last)
            except BadRequestError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
                continue
            await self._wait(stored)
            return True
        raise Contended(
            f"{CREATE_ATTEMPTS} other changes of this kind landed while this one was tried;"
            " nothing changed, retry shortly"
        )

    def _client(self) -> Client:
        nc = self.tracker.publisher.client
        if nc is None or not nc.is_connected:
            raise ConnectionError(
                f"NATS at {shown_url(self.settings.nats_url)} is unreachable; nothing changed"
            )
        return nc

    async def _last_sequence(self, event: Event) -> int:
        """The stream sequence of the last event on ``event``'s subject (0: none)."""
        found = await self._last_stored(event)
        return (found.seq or 0) if found is not None else 0

    async def _last_stored(self, event: Event) -> RawStreamMsg | None:
        """The last message stored on ``event``'s subject (None: none)."""
        topology = self.settings.topology
        js = self._client().jetstream()
        try:
            return await js.get_last_msg(
                topology.event_stream.name, topology.event_subject(event.SUBJECT), direct=True
            )
        except NotFoundError:
            return None

    async def _publish(self, event: Event, *, expected_last: int | None = None) -> int:
        """Store ``event``; its stream sequence."""
        nc = self._client()
        subject = self.settings.topology.event_subject(event.SUBJECT)
        headers = headers_for(event)
        if expected_last is not None:
            headers[EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected_last)
        ack = await permitted(
            nc, subject, nc.jetstream().publish(subject, encode(event), headers=headers)
        )
        await self._refuse_if_ahead(event, ack.seq)
        return ack.seq

    async def _refuse_if_ahead(self, event: Event, seq: int) -> None:
        """Raise ``ClockAhead`` when ``event`` (stored at ``seq``) is stamped further
        ahead of when NATS stored it than the projections accept: they judge by the
        server's time and would dead-letter it, so waiting for it to apply would report
        a change that never happened. (When another change has landed on the subject
        since, or the stored time cannot be read, the apply is waited for as usual.) The
        bound is this process's ``max_clock_skew``: give the workers the same."""
        try:
            stored = await self._last_stored(event)
        except (NatsError, TimeoutError):  # no answer: wait for the apply
            return
        if stored is None or stored.seq != seq or stored.time is None:
            return
        ahead = (event.occurred_at - stored.time).total_seconds()
        if ahead > self.settings.max_clock_skew:
            raise ClockAhead(
                f"this host's clock is {ahead:.0f} s ahead of the NATS server's, more than"
                f" max_clock_skew ({self.settings.max_clock_skew:.0f} s, as the workers should"
                " have it): the change was stored but the projections dead-letter it, so"
                " nothing changed; set this host's clock right (NTP) and retry"
            )

    async def _wait(self, seq: int) -> None:
        stored = time.monotonic()
        await self.queries.wait_applied(self.projection, seq, self.apply_timeout)
        await asyncio.sleep(max(0.0, stored + self.settle - time.monotonic()))
