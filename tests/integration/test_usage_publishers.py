"""Who published each usage event: every host credential publishes usage on its own
subject (``<prefix>.events.usage.recorded.<user>``, which NATS enforces), and the
consumers carry that user into the usage history; events on the bare subject, where
earlier releases published them, are still counted, with no publisher. On a real
nats-server with the config ``budget up`` writes, and PostgreSQL."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client

from budget.publisher import EventPublisher, PublisherConfig
from budget.spool import SpooledEvent
from events import BudgetScope, PolicySet, UsageRecorded, encode, headers_for, utc_now
from events.codec import HEADER_MSG_ID
from events.policy import BudgetPolicy
from projections.engine.deadletter import recent_dead_letters
from projections.engine.rebuild import rebuild
from projections.registry import GROUPS, PROJECTIONS, get_projection

from secured_nats import Secured
from support import catch_up, publish, rows, usage_event, wait_for

pytestmark = pytest.mark.integration

USAGE_GROUP = [PROJECTIONS[name] for name in GROUPS["usage"]]
HISTORY = "SELECT event_id, publisher, cost FROM usage_history ORDER BY stream_seq"


async def _record_as(secured: Secured, user: str, spool: Path, *events: UsageRecorded) -> None:
    """Publish ``events`` as a host app connected as ``user`` does (its tracker's
    publisher), and wait for JetStream to acknowledge every one."""
    publisher = EventPublisher(
        PublisherConfig.from_settings(secured.settings(user, spool_dir=spool))
    )
    await publisher.start()
    try:
        for event in events:
            await publisher.publish(event)
        await publisher.flush()
        assert len(publisher.spool) == 0
    finally:
        await publisher.close()


async def resend_spool(publisher: EventPublisher) -> None:
    """Start ``publisher``, which re-sends its spool, until the spool is empty; close it."""
    await publisher.start()

    async def resent() -> bool:
        """the publisher re-sent its spool"""
        return len(publisher.spool) == 0

    try:
        await wait_for(resent)
    finally:
        await publisher.close()


async def test_the_history_names_the_credential_that_published_each_event(
    secured: Secured, service: Client, db: str, tmp_path: Path
) -> None:
    topology = secured.topology
    # Before this release every publisher used the bare subject: still counted.
    earlier = usage_event(cost="0.5")
    await publish(service, topology, [earlier])
    first, second = usage_event(cost="0.25"), usage_event(cost="0.125")
    await _record_as(secured, "host", tmp_path / "host", first)
    await _record_as(secured, "host2", tmp_path / "host2", second)
    # De-duplication spans the subjects (JetStream's, per stream): host2 re-sending the
    # first host's event adds nothing, and the event stays the first host's.
    again = await service.jetstream().publish(
        topology.event_subject(UsageRecorded.SUBJECT, publisher="host2"),
        encode(first),
        headers=headers_for(first),
    )
    assert again.duplicate

    await catch_up(USAGE_GROUP, service, db, topology)
    expected = [
        (earlier.event_id, None, Decimal("0.5")),
        (first.event_id, "host", Decimal("0.25")),
        (second.event_id, "host2", Decimal("0.125")),
    ]
    assert await rows(db, HISTORY) == expected
    alices = "SELECT sum(requests), sum(cost) FROM spend_buckets WHERE scope_key = 'alice'"
    assert await rows(db, f"{alices} AND scope = 'user'") == [(3, Decimal("0.875"))]
    # A replay of the log gives the same rows.
    history = get_projection("history")
    assert await rebuild(history, nc=service, database_url=db, topology=topology) == 2
    assert await rows(db, HISTORY) == expected
    assert await recent_dead_letters(service.jetstream(), topology) == []


async def test_an_event_off_its_subjects_is_dead_lettered(
    secured: Secured, service: Client, db: str
) -> None:
    """A host may publish any bytes on its own usage subject: what is not a usage event
    there (a policy, which only the services may set) is dead-lettered, as is usage on a
    subject deeper than a publisher's."""
    topology = secured.topology
    own = topology.event_subject(UsageRecorded.SUBJECT, publisher="host")
    policy = PolicySet(
        occurred_at=utc_now(),
        policy=BudgetPolicy(name="forged", scope=BudgetScope.GLOBAL, limit_amount=Decimal(1)),
    )
    deep = f"{own}.x"
    # The service credential stands in for the host here: the host's own permission to
    # publish on ``own`` is proven in test_nats_permissions.py.
    js = service.jetstream()
    await js.publish(own, encode(policy), headers=headers_for(policy))
    stray = usage_event()
    await js.publish(deep, encode(stray), headers=headers_for(stray))
    honest = usage_event()
    await js.publish(own, encode(honest), headers=headers_for(honest))

    await catch_up([*USAGE_GROUP, get_projection("policies")], service, db, topology)
    assert await rows(db, "SELECT event_id, publisher FROM usage_history") == [
        (honest.event_id, "host")
    ]
    assert await rows(db, "SELECT count(*) FROM budget_policies") == [(0,)]
    reasons = {(d.original_subject, d.reason) for d in await recent_dead_letters(js, topology)}
    usage = topology.event_subject(UsageRecorded.SUBJECT)
    assert reasons == {
        (
            own,
            f"type: PolicySet belongs on {topology.event_subject(PolicySet.SUBJECT)}, not on {own}",
        ),
        (deep, f"type: UsageRecorded belongs on {usage} or {usage}.<publisher>, not on {deep}"),
    }


async def test_usage_spooled_on_another_subject_is_sent_on_the_credentials_own(
    secured: Secured, service: Client, tmp_path: Path
) -> None:
    """A spool written by an earlier release holds usage on the bare subject, which a host
    credential may no longer publish on: re-sent, it goes on the credential's own subject
    rather than being refused and dropped."""
    topology = secured.topology
    spool = tmp_path / "spool"
    settings = secured.settings("host", spool_dir=spool)
    publisher = EventPublisher(PublisherConfig.from_settings(settings))
    earlier = usage_event()
    bare = topology.event_subject(UsageRecorded.SUBJECT)
    publisher.spool.update(put=[SpooledEvent(str(earlier.event_id), bare, encode(earlier))])
    await resend_spool(publisher)
    message = await service.jetstream().get_last_msg(topology.event_stream.name, ">")
    assert message.subject == topology.event_subject(UsageRecorded.SUBJECT, publisher="host")
    assert message.data == encode(earlier)
    assert uuid.UUID((message.headers or {})[HEADER_MSG_ID]) == earlier.event_id
    assert publisher.spool.dead_letters() == []


async def test_an_event_the_credential_may_not_publish_is_kept_in_the_spools_dead_letters(
    secured: Secured, tmp_path: Path
) -> None:
    """The spool, shared with a service process, holds a policy change it could not send;
    a host's publisher re-sending the spool is refused it by NATS: the event goes to the
    spool's dead letters with the reason (for a credential that may to send), rather than
    being deleted."""
    topology = secured.topology
    spool = tmp_path / "spool"
    change = PolicySet(
        occurred_at=utc_now(),
        policy=BudgetPolicy(name="spooled", scope=BudgetScope.GLOBAL, limit_amount=Decimal(1)),
    )
    subject = topology.event_subject(PolicySet.SUBJECT)
    publisher = EventPublisher(
        PublisherConfig.from_settings(secured.settings("host", spool_dir=spool))
    )
    publisher.spool.update(put=[SpooledEvent(str(change.event_id), subject, encode(change))])
    await resend_spool(publisher)
    [dead] = publisher.spool.dead_letters()
    assert dead.event == SpooledEvent(str(change.event_id), subject, encode(change))
    refused = f"refused by NATS: the NATS user 'host' may not publish to {subject};"
    assert dead.reason.startswith(refused)
