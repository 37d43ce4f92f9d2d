"""A projection whose checkpoint lies past the end of the event log refuses to read it
(real NATS and PostgreSQL): the log is not the one it was built from (recreated, lost,
left in another NATS account), and reading on from the checkpoint would skip every event
up to it, undercounting spend with no error anywhere."""

from __future__ import annotations

import pytest
from nats.aio.client import Client

from events import Topology
from projections.engine.log import LogError, declare_streams
from projections.engine.rebuild import rebuild_if_reshaped
from projections.spend import SpendProjection

from support import catch_up, publish, rows, usage_event

pytestmark = pytest.mark.integration


async def test_a_checkpoint_past_the_logs_end_is_refused_with_what_to_do(
    nc: Client, db: str, topology: Topology
) -> None:
    await publish(nc, topology, [usage_event(user=u) for u in ("alice", "bob", "carol")])
    await catch_up(SpendProjection(), nc, db, topology)
    js = nc.jetstream()
    await js.delete_stream(topology.event_stream.name)  # the log lost; a new one begun
    await declare_streams(js, topology)
    await publish(nc, topology, [usage_event(user="dave")])

    with pytest.raises(LogError, match=r"checkpoint is at stream sequence 3.*ends at 1"):
        await catch_up(SpendProjection(), nc, db, topology)
    requests = "SELECT sum(requests) FROM spend_buckets WHERE scope = 'global'"
    assert await rows(db, requests) == [(3,)]  # nothing read past it


async def recreate_log_grown_past_the_checkpoint(nc: Client, db: str, topology: Topology) -> None:
    """Spend applies 3 events; the log is lost, and a new one holds 4 others."""
    await publish(nc, topology, [usage_event(user=u) for u in ("alice", "bob", "carol")])
    await catch_up(SpendProjection(), nc, db, topology)
    js = nc.jetstream()
    await js.delete_stream(topology.event_stream.name)
    await declare_streams(js, topology)
    await publish(nc, topology, [usage_event(user=u) for u in ("dave", "erin", "frank", "gus")])


async def test_a_log_recreated_and_grown_past_the_checkpoint_is_refused_with_what_to_do(
    nc: Client, db: str, topology: Topology
) -> None:
    """The new log reaches past the checkpoint, so its length cannot tell; the message
    the checkpoint stands on can (its digest, kept with the checkpoint)."""
    await recreate_log_grown_past_the_checkpoint(nc, db, topology)

    with pytest.raises(
        LogError, match=r"message at its checkpoint \(stream sequence 3 of .*not the one it applied"
    ):
        await catch_up(SpendProjection(), nc, db, topology)
    requests = "SELECT sum(requests) FROM spend_buckets WHERE scope = 'global'"
    assert await rows(db, requests) == [(3,)]


async def test_the_same_log_read_again_after_a_restart_is_read_on(
    nc: Client, db: str, topology: Topology
) -> None:
    await publish(nc, topology, [usage_event(user=u) for u in ("alice", "bob", "carol")])
    await catch_up(SpendProjection(), nc, db, topology)
    await publish(nc, topology, [usage_event(user="dave")])

    await catch_up(SpendProjection(), nc, db, topology)
    requests = "SELECT sum(requests) FROM spend_buckets WHERE scope = 'global'"
    assert await rows(db, requests) == [(4,)]
    digest = "SELECT message_digest IS NOT NULL FROM projection_checkpoints WHERE name = 'spend'"
    assert await rows(db, digest) == [(True,)]


async def test_a_projection_to_rebuild_for_its_shape_is_not_rebuilt_from_another_log(
    nc: Client, db: str, topology: Topology
) -> None:
    """An upgrade that reshapes a projection rebuilds it from the log and drops the old
    version: from a log recreated since, that would lose every event the old one held."""
    await recreate_log_grown_past_the_checkpoint(nc, db, topology)
    await rows(db, "UPDATE projection_checkpoints SET shape = NULL RETURNING name")

    with pytest.raises(LogError, match=r"not the one it applied.*rebuild spend"):
        await rebuild_if_reshaped(SpendProjection(), nc=nc, database_url=db, topology=topology)
    live = "SELECT active_version FROM projection_registry WHERE name = 'spend'"
    assert await rows(db, live) == [(1,)]
