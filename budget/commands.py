"""Publishing a change (a policy, a rule, an acknowledgement) and waiting until the
projection that reads it has applied it, so the caller reads its own write."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client

from budget.config import Settings
from events import Event, encode, headers_for
from projections.checkpoints import live_position
from projections.db import connect

__all__ = ["NotApplied", "publish_and_wait"]


class NotApplied(TimeoutError):
    """The change is on the log but its projection's worker has not applied it yet."""


async def publish_and_wait(
    nc: Client | None, settings: Settings, event: Event, projection: str, within: float
) -> None:
    if nc is None or not nc.is_connected:
        raise ConnectionError(f"NATS at {settings.nats_url} is unreachable; nothing changed")
    subject = settings.topology.event_subject(event.SUBJECT)
    ack = await nc.jetstream().publish(subject, encode(event), headers=headers_for(event))
    conn = await connect(settings.database_url)
    deadline = time.monotonic() + within
    try:
        while await live_position(conn, projection) < ack.seq:
            if time.monotonic() > deadline:
                raise NotApplied(
                    f"the change is stored (stream sequence {ack.seq}) but the {projection}"
                    f" worker has not applied it within {within:.0f}s; is `budget worker"
                    f" {projection}` (or `budget up`) running?"
                )
            await asyncio.sleep(0.01)
    finally:
        await conn.close()
