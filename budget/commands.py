"""What the manager and the alert engine share: publishing a change (a policy, a rule, an
acknowledgement) and waiting until the projection that reads it has applied it, so the
caller reads its own write; reads go through ``queries``."""

from __future__ import annotations

import asyncio
import time

from budget.config import Settings, shown_url
from budget.natsconn import permitted
from budget.queries import Queries, RpcQueries
from budget.tracker import UsageTracker
from events import Event, encode, headers_for

__all__ = ["ChangeClient"]


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
        nc = self.tracker.publisher.client
        if nc is None or not nc.is_connected:
            raise ConnectionError(
                f"NATS at {shown_url(self.settings.nats_url)} is unreachable; nothing changed"
            )
        subject = self.settings.topology.event_subject(event.SUBJECT)
        publish = nc.jetstream().publish(subject, encode(event), headers=headers_for(event))
        ack = await permitted(nc, subject, publish)
        stored = time.monotonic()
        await self.queries.wait_applied(self.projection, ack.seq, self.apply_timeout)
        await asyncio.sleep(max(0.0, stored + self.settle - time.monotonic()))
