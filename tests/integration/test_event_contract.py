"""The event contract at the consumers, on real NATS and PostgreSQL: an event that breaks
it (no identity of its own, on another type's subject, out of bounds) is dead-lettered
with the reason, and no such event stops or corrupts the counting of the others."""

from __future__ import annotations

import json
from datetime import timedelta

from nats.aio.client import Client

from events import TimeBounds, Topology, UsageRecorded, encode, utc_now
from projections.deadletter import recent_dead_letters
from projections.engine import EngineConfig
from projections.rebuild import rebuild
from projections.spend import SpendProjection

from support import catch_up, publish, rows, usage_event, wait_for

GLOBAL_REQUESTS = "SELECT coalesce(sum(requests), 0) FROM spend_buckets WHERE scope = 'global'"


async def reasons(nc: Client, topology: Topology) -> dict[int, str]:
    """Dead letters by the stream sequence of the message they hold."""
    letters = await recent_dead_letters(nc.jetstream(), topology)
    return {letter.original_seq or 0: letter.reason for letter in letters}


async def test_an_event_on_another_types_subject_is_dead_lettered(
    nc: Client, db: str, topology: Topology
) -> None:
    misfiled = usage_event()
    js = nc.jetstream()
    await js.publish(topology.event_subject("usage.repriced"), encode(misfiled))
    await publish(nc, topology, [usage_event()])
    await catch_up(SpendProjection(), nc, db, topology)

    assert await rows(db, GLOBAL_REQUESTS) == [(1,)]
    expected = topology.event_subject(UsageRecorded.SUBJECT)
    assert (await reasons(nc, topology))[1] == (
        f"type: UsageRecorded belongs on {expected}, not on"
        f" {topology.event_subject('usage.repriced')}"
    )


async def test_a_tag_named_event_id_does_not_give_an_event_its_identity(
    nc: Client, db: str, topology: Topology
) -> None:
    """Counted, it would get a new id on every read: counted again by every rebuild."""
    payload = json.loads(encode(usage_event().model_copy(update={"tags": {"event_id": "x"}})))
    del payload["event_id"]
    js = nc.jetstream()
    await js.publish(topology.event_subject(UsageRecorded.SUBJECT), json.dumps(payload).encode())
    await publish(nc, topology, [usage_event()])
    await catch_up(SpendProjection(), nc, db, topology)

    assert await rows(db, GLOBAL_REQUESTS) == [(1,)]
    assert (await reasons(nc, topology))[1].startswith("event_id: required at the top level")


async def test_an_event_out_of_time_bounds_is_dead_lettered_saying_which_bound(
    nc: Client, db: str, topology: Topology
) -> None:
    """The default bounds: 5 minutes ahead of the time the event was stored, 730 days
    back."""
    now = utc_now()
    ahead, old = usage_event(at=now + timedelta(hours=1)), usage_event(at=now - timedelta(days=800))
    await publish(nc, topology, [ahead, old, usage_event()])
    await catch_up(SpendProjection(), nc, db, topology, config=EngineConfig())

    assert await rows(db, GLOBAL_REQUESTS) == [(1,)]
    found = await reasons(nc, topology)
    assert found[1].startswith(f"occurred_at: {ahead.occurred_at.isoformat()} is 0:5")
    assert "(max_clock_skew) is allowed" in found[1]
    assert found[2].startswith(f"occurred_at: {old.occurred_at.isoformat()} is 800 days")
    assert "(max_event_age) is allowed" in found[2]


async def test_a_rebuild_judges_an_event_by_when_it_was_stored_not_by_when_it_is_read(
    nc: Client, db: str, topology: Topology
) -> None:
    """An event inside the window when it arrived stays counted in a rebuild that runs
    after the window has passed it: replay equals live."""
    config = EngineConfig(time_bounds=TimeBounds(max_event_age=timedelta(seconds=3)))
    event = usage_event(at=utc_now() - timedelta(seconds=1))
    await publish(nc, topology, [event])
    await catch_up(SpendProjection(), nc, db, topology, config=config)
    assert await rows(db, GLOBAL_REQUESTS) == [(1,)]

    async def past_the_window() -> bool:
        """the event is older than the window"""
        return utc_now() - event.occurred_at > timedelta(seconds=4)

    await wait_for(past_the_window, within=10)

    await rebuild(SpendProjection(), nc=nc, database_url=db, topology=topology, config=config)

    assert await rows(db, GLOBAL_REQUESTS) == [(1,)]
    assert await reasons(nc, topology) == {}
