"""NATS users and their roles (events.permissions, services.nats_config) on a real
nats-server with the config ``budget up`` writes: a host records usage, checks and asks,
and nothing else; an alert subscriber only receives alerts; anonymous clients are refused.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from budget.manager import BudgetManager
from budget.natsconn import (
    PermissionDenied,
    connect_nats,
    nats_options,
    permitted,
    round_trip,
)
from budget.rpc import Refused
from budget.tracker import start_usage_tracker
from events import (
    AlertAcknowledged,
    AlertRuleSet,
    ApiKeyCreated,
    ApiKeyRevoked,
    BudgetPolicy,
    BudgetScope,
    Event,
    LimitAction,
    PolicyDeleted,
    PolicySet,
    RequestBlocked,
    Topology,
    UsageRecorded,
    UsageRepriced,
    encode,
)
from events.codec import HEADER_MSG_ID
from events.permissions import API_USER, ENFORCER_USER, NOTIFIER_USER, QUERY_USER
from events.queries import QUERY_POLICIES
from events.rpc import RPC_CHECK, RPC_RELEASE, RPC_SNAPSHOT
from projections.engine.log import declare_streams
from projections.engine.rebuild import rebuild
from projections.registry import get_projection
from services.doctor import Options, diagnose
from services.ops import prepare

from enforcement import enforcement_stack
from secured_nats import Secured
from support import rows, usage_event, wait_for

pytestmark = pytest.mark.integration


@dataclass
class Conn:
    nc: Client
    errors: list[str] = field(default_factory=list)

    async def refused_subscription(self, subject: str, within: float = 30) -> bool:
        """Subscribe; True once the server refuses it (False if not within ``within`` s)."""
        await self.nc.subscribe(subject)
        refusal = f'subscription to "{subject.lower()}"'
        deadline = time.monotonic() + within
        while not any(refusal in e for e in self.errors):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True


@pytest.fixture
async def connect(secured: Secured) -> AsyncIterator[Callable[[str], Awaitable[Conn]]]:
    opened: list[Client] = []

    async def open_as(user: str) -> Conn:
        conn = Conn(nc=None)  # type: ignore[arg-type]

        async def record(exc: Exception) -> None:
            conn.errors.append(str(exc).lower())

        options = nats_options(secured.settings(user))
        conn.nc = await connect_nats(secured.server.url, within=5, error_cb=record, **options)
        opened.append(conn.nc)
        return conn

    yield open_as
    for nc in opened:
        await nc.close()


FORBIDDEN_TO_HOSTS: tuple[type[Event], ...] = (
    PolicySet,
    PolicyDeleted,
    AlertRuleSet,
    AlertAcknowledged,
    ApiKeyCreated,
    ApiKeyRevoked,
    UsageRepriced,
)


def _publish(nc: Client, subject: str, data: bytes) -> Awaitable[Any]:
    headers = {HEADER_MSG_ID: str(uuid.uuid4())}
    return nc.jetstream().publish(subject, data, headers=headers)


async def test_an_anonymous_client_is_refused(secured: Secured) -> None:
    with pytest.raises(NatsError, match=r"(?i)authorization violation"):
        await nats.connect(secured.server.url, allow_reconnect=False, connect_timeout=5)


async def test_a_host_cannot_publish_admin_events_and_the_stream_never_holds_them(
    secured: Secured, service: Client, connect: Callable[[str], Awaitable[Conn]]
) -> None:
    host = (await connect("host")).nc
    for event_type in FORBIDDEN_TO_HOSTS:
        subject = secured.topology.event_subject(event_type.SUBJECT)
        with pytest.raises(PermissionDenied, match="only a 'service' credential may"):
            await permitted(host, subject, _publish(host, subject, b"{}"))
    # The positive signal: an honest event published after them is stored, and alone.
    subject = secured.topology.event_subject(UsageRecorded.SUBJECT, publisher="host")
    ack = await permitted(host, subject, _publish(host, subject, encode(usage_event())))
    info = await service.jetstream().stream_info(
        secured.topology.event_stream.name, subjects_filter=">"
    )
    assert info.state.subjects == {subject: 1}
    assert ack.seq == info.state.last_seq == 1


async def test_a_host_records_usage_on_its_own_subject_only(
    secured: Secured, service: Client, connect: Callable[[str], Awaitable[Conn]]
) -> None:
    """Each host credential publishes usage on ``<prefix>.events.usage.recorded.<user>``
    alone, so the consumers know which one published an event: another host's subject,
    the bare one earlier releases published on and any deeper one are refused by the
    server, and the stream never holds what it refused."""
    host = (await connect("host")).nc
    topology = secured.topology
    others = [
        topology.event_subject(UsageRecorded.SUBJECT, publisher="host2"),
        topology.event_subject(UsageRecorded.SUBJECT),
        topology.event_subject(UsageRecorded.SUBJECT, publisher="host.x"),
    ]
    for subject in others:
        with pytest.raises(PermissionDenied, match=f"may not publish to {subject};"):
            await permitted(host, subject, _publish(host, subject, encode(usage_event())))
    # The positive signal: its own subject takes its event, stored alone.
    own = topology.event_subject(UsageRecorded.SUBJECT, publisher="host")
    ack = await permitted(host, own, _publish(host, own, encode(usage_event())))
    info = await service.jetstream().stream_info(topology.event_stream.name, subjects_filter=">")
    assert info.state.subjects == {own: 1}
    assert ack.seq == info.state.last_seq == 1


async def test_a_host_cannot_have_jetstream_acknowledge_onto_another_subject(
    secured: Secured, service: Client, connect: Callable[[str], Awaitable[Conn]]
) -> None:
    """NATS checks the subject a client publishes to, not the reply subject it names, and
    JetStream answers a stored message on that reply subject. A host's usage crosses into
    the services' account by an import, which remaps its reply into the host's own
    account: the acknowledgement never lands on the log, the alerts, the dead letters or
    another host's requests."""
    host = (await connect("host")).nc
    topology = secured.topology
    usage = topology.event_subject(UsageRecorded.SUBJECT, publisher="host")
    targets = [
        topology.event_subject(PolicyDeleted.SUBJECT),
        topology.alert_subject("critical", "budget_exceeded"),
        topology.dead_letter_subject("spend-v1"),
        topology.rpc_subject(RPC_CHECK, caller="host2"),
    ]
    landed: list[str] = []

    async def seen(msg: Msg) -> None:
        landed.append(msg.subject)

    await service.subscribe(f"{topology.prefix}.>", cb=seen)
    await service.flush()
    for target in targets:
        headers = {HEADER_MSG_ID: str(uuid.uuid4())}
        await host.publish(usage, encode(usage_event()), reply=target, headers=headers)
    # The positive signal: an honest publish after them is acknowledged to the host, and
    # the server sends the services' connection what it routed before its PONG.
    await permitted(host, usage, _publish(host, usage, encode(usage_event())))
    await service.flush()
    info = await service.jetstream().stream_info(topology.event_stream.name, subjects_filter=">")
    assert info.state.subjects == {usage: len(targets) + 1}
    assert [subject for subject in landed if subject != usage] == []


async def test_a_manager_with_a_host_credential_says_which_credential_may_set_a_policy(
    secured: Secured, service: Client, tmp_path: Path
) -> None:
    settings = secured.settings("host", spool_dir=tmp_path / "spool", default_limit=None)
    tracker = await start_usage_tracker(settings)
    try:
        manager = BudgetManager(settings, tracker, apply_timeout=60)
        policy = BudgetPolicy(
            name="p", scope=BudgetScope.GLOBAL, limit_amount=Decimal(1), action=LimitAction.BLOCK
        )
        with pytest.raises(PermissionDenied) as refused:
            await manager.set_policy(policy)
    finally:
        await tracker.close()
    assert str(refused.value) == (
        f"the NATS user 'host' may not publish to {secured.topology.prefix}.events.policy.set;"
        " only a 'service' credential may (BUDGET_NATS_USER and BUDGET_NATS_PASSWORD_FILE,"
        " or nats_user and nats_password_file in config.yaml; see docs/security.md)"
    )


async def test_a_host_reads_neither_the_stream_nor_the_dead_letters_nor_other_replies(
    secured: Secured, service: Client, connect: Callable[[str], Awaitable[Conn]]
) -> None:
    host = await connect("host")
    topology = secured.topology
    stream = topology.event_stream.name
    info = f"$JS.API.STREAM.INFO.{stream}"
    with pytest.raises(PermissionDenied):
        await permitted(host.nc, info, host.nc.request(info, b"", timeout=30))
    create = f"$JS.API.CONSUMER.CREATE.{stream}.spy"
    with pytest.raises(PermissionDenied):
        await permitted(host.nc, create, host.nc.request(create, b"{}", timeout=30))
    # A direct get names the subject it reads; with a payload the server refuses it.
    last_policy = f"$JS.API.DIRECT.GET.{stream}.{topology.event_subject('policy.set')}"
    answer = await host.nc.request(last_policy, b'{"seq": 1}', timeout=30)
    assert answer.headers is not None and answer.headers.get("Status") == "408"
    assert await host.refused_subscription(topology.events_wildcard)
    assert await host.refused_subscription(f"{topology.prefix}.dlq.>")
    assert await host.refused_subscription("_INBOX.host2.>")
    assert await host.refused_subscription("$JS.API.>")
    impostor = topology.rpc_subject("query.policies", caller="host2")
    with pytest.raises(PermissionDenied, match="may not publish to"):
        await permitted(host.nc, impostor, host.nc.request(impostor, b"{}", timeout=30))

    # Its own inbox it may read: the answer to its request arrives there (the services
    # answer on the reply subject NATS remapped into their account), and no refusal came.
    async def answer(msg: Msg) -> None:
        await service.publish(msg.reply, b"reply")

    await service.subscribe(topology.rpc_subject("echo", caller="host"), cb=answer)
    await service.flush()
    asked = topology.rpc_subject("echo", caller="host")
    assert (await host.nc.request(asked, b"", timeout=30)).data == b"reply"
    assert not any("_inbox.host." in e.lower() for e in host.errors)


async def test_the_api_credential_is_refused_what_the_api_does_not_do(
    secured: Secured, service: Client, connect: Callable[[str], Awaitable[Conn]]
) -> None:
    """The HTTP API's credential publishes usage on its keys' own subjects alone
    (``api-key-<id>``) and asks as its keys or itself: usage as a host, as the services,
    as itself, on the bare subject or a deeper one; events only the services publish; a
    projection's dead letters; asking as a host or the services; moving a worker's
    consumer on (its acknowledgements, its next messages) or making a named one; reading
    the log's stream, the events, the alerts or another's inbox are refused, and the
    stream never holds what was refused. (What it may do, it does:
    test_api_nats_credential.py.)"""
    api = await connect(API_USER)
    topology = secured.topology
    stream = topology.event_stream.name
    usage = UsageRecorded.SUBJECT
    for subject in (
        topology.event_subject(usage, publisher="host"),
        topology.event_subject(usage, publisher="service"),
        topology.event_subject(usage, publisher=API_USER),
        topology.event_subject(usage, publisher=NOTIFIER_USER),
        topology.event_subject(usage),
        topology.event_subject(usage, publisher="api-key-0a1b2c3d4e5f.x"),
        topology.event_subject(UsageRepriced.SUBJECT),
        topology.dead_letter_subject("spend-v1"),
    ):
        with pytest.raises(PermissionDenied, match=f"may not publish to {re.escape(subject)};"):
            await permitted(api.nc, subject, _publish(api.nc, subject, encode(usage_event())))
    for subject in (
        topology.rpc_subject(RPC_RELEASE, caller="host"),
        topology.rpc_subject(RPC_RELEASE, caller="service"),
        topology.rpc_subject(RPC_RELEASE, caller=ENFORCER_USER),  # who may release any hold
        topology.rpc_subject(QUERY_POLICIES, caller=API_USER),
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.spy",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.spy",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.spend-v1",
    ):
        with pytest.raises(PermissionDenied, match=f"may not publish to {re.escape(subject)};"):
            await permitted(api.nc, subject, api.nc.request(subject, b"{}", timeout=30))
    # A worker's acknowledgement, which moves its consumer on past events it never applied,
    # and an alert: plain publishes, refused as the server says.
    acknowledgement = f"$JS.ACK.{stream}.spend-v1.1.1.1.0.0"
    alert = topology.alert_subject("critical", "budget_exceeded")
    for subject in (acknowledgement, alert):
        await api.nc.publish(subject, b"+ACK")
    await api.nc.flush()

    async def both_refused() -> bool:
        """the server refused the acknowledgement and the alert"""
        refused = [e for e in api.errors if "permissions violation for publish" in e]
        return all(any(s.lower() in e for e in refused) for s in (acknowledgement, alert))

    await wait_for(both_refused)
    for subject in (
        topology.events_wildcard,
        f"{topology.prefix}.dlq.>",
        topology.alerts_wildcard,
        f"{topology.prefix}.rpc.>",
        "_INBOX.host.>",
        "$JS.API.>",
    ):
        assert await api.refused_subscription(subject), subject
    # The positive signal: a key's own subject takes its event, stored alone.
    own = topology.event_subject(usage, publisher="api-key-0a1b2c3d4e5f")
    ack = await permitted(api.nc, own, _publish(api.nc, own, encode(usage_event())))
    info = await service.jetstream().stream_info(stream, subjects_filter=">")
    assert info.state.subjects == {own: 1}
    assert ack.seq == info.state.last_seq == 1


def _log_reads(topology: Topology) -> tuple[str, ...]:
    """JetStream requests that read the dead letters or the event log, or open a consumer
    on it: refused to every credential but the workers'."""
    stream, dead_letters = topology.event_stream.name, topology.dead_letter_stream.name
    return (
        f"$JS.API.STREAM.INFO.{dead_letters}",
        f"$JS.API.STREAM.MSG.GET.{dead_letters}",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
    )


def _states(*conns: Conn) -> str:
    """What each connection sent, received and was refused: why a message did not arrive."""
    return "; ".join(
        f"{c.nc.options.get('user')}: connected {c.nc.is_connected}, {dict(c.nc.stats)},"
        f" errors {c.errors}"
        for c in conns
    )


async def _refused_everything(
    conn: Conn,
    *,
    events: tuple[str, ...],
    requests: tuple[str, ...],
    plain: tuple[str, ...],
    subscriptions: tuple[str, ...],
) -> None:
    """``conn`` is refused each JetStream publish of an event to one of ``events``, each
    request to ``requests``, each plain publish to ``plain`` (its refusal waited for: the
    server says it asynchronously) and each subscription to ``subscriptions``."""
    for subject in events:
        with pytest.raises(PermissionDenied, match=f"may not publish to {re.escape(subject)};"):
            await permitted(conn.nc, subject, _publish(conn.nc, subject, encode(usage_event())))
    for subject in requests:
        with pytest.raises(PermissionDenied, match=f"may not publish to {re.escape(subject)};"):
            await permitted(conn.nc, subject, conn.nc.request(subject, b"{}", timeout=30))
    for subject in plain:
        await conn.nc.publish(subject, b"forged")
    await conn.nc.flush()

    async def all_refused() -> bool:
        """the server refused every plain publish"""
        refused = [e for e in conn.errors if "permissions violation for publish" in e]
        return all(any(f'"{s.lower()}"' in e for e in refused) for s in plain)

    await wait_for(all_refused)
    for subject in subscriptions:
        assert await conn.refused_subscription(subject), subject


async def test_the_enforcer_credential_is_refused_what_the_enforcer_does_not_do(
    secured: Secured, service: Client, connect: Callable[[str], Awaitable[Conn]]
) -> None:
    """The enforcer's credential answers requests and publishes ``RequestBlocked`` and
    ``PolicySet`` alone: deleting a policy, usage (as itself or a host), repricing, alert
    rules, API keys, dead letters or alerts; reading the log, the dead letters or a
    consumer; asking the services anything; moving a worker's consumer on; reading the
    events, the alerts, the query service's requests or another's inbox are refused, and
    the stream never holds what was refused. (What it may do, it does:
    test_service_nats_users.py.)"""
    enforcer = await connect(ENFORCER_USER)
    topology = secured.topology
    stream = topology.event_stream.name
    usage = UsageRecorded.SUBJECT
    await _refused_everything(
        enforcer,
        events=(
            topology.event_subject(PolicyDeleted.SUBJECT),
            topology.event_subject(usage, publisher=ENFORCER_USER),
            topology.event_subject(usage, publisher="host"),
            topology.event_subject(usage),
            topology.event_subject(UsageRepriced.SUBJECT),
            topology.event_subject(AlertRuleSet.SUBJECT),
            topology.event_subject(ApiKeyCreated.SUBJECT),
            topology.dead_letter_subject("spend-v1"),
        ),
        requests=(
            *_log_reads(topology),
            topology.rpc_subject(QUERY_POLICIES, caller=ENFORCER_USER),
            topology.rpc_subject(RPC_CHECK, caller="host"),
        ),
        plain=(
            f"$JS.ACK.{stream}.spend-v1.1.1.1.0.0",
            topology.alert_subject("critical", "budget_exceeded"),
        ),
        subscriptions=(
            topology.events_wildcard,
            f"{topology.prefix}.dlq.>",
            topology.alerts_wildcard,
            topology.rpc_wildcard(QUERY_POLICIES),
            "_INBOX.host.>",
            "$JS.API.>",
        ),
    )
    # The positive signal: a refusal it publishes is stored, and alone.
    blocked = topology.event_subject(RequestBlocked.SUBJECT)
    ack = await permitted(enforcer.nc, blocked, _publish(enforcer.nc, blocked, b"{}"))
    info = await service.jetstream().stream_info(stream, subjects_filter=">")
    assert info.state.subjects == {blocked: 1}
    assert ack.seq == info.state.last_seq == 1


async def test_the_notifier_credential_sends_alerts_and_nothing_else(
    secured: Secured, service: Client, connect: Callable[[str], Awaitable[Conn]]
) -> None:
    """The notifier's credential publishes alerts alone: it cannot answer a check (take
    the enforcer's requests, or publish to an asker's inbox), publish a policy, usage or
    a dead letter, read the dead letters or ask anything, nor subscribe to anything; the
    stream never holds what was refused. (What it may do, it does:
    test_service_nats_users.py.)"""
    notifier, alerts = await connect(NOTIFIER_USER), await connect("alerts")
    topology = secured.topology
    dead_letters = topology.dead_letter_stream.name
    await _refused_everything(
        notifier,
        events=(
            topology.event_subject(PolicyDeleted.SUBJECT),
            topology.event_subject(UsageRecorded.SUBJECT, publisher=NOTIFIER_USER),
            topology.event_subject(UsageRecorded.SUBJECT, publisher="host"),
            topology.dead_letter_subject("spend-v1"),
        ),
        requests=(
            f"$JS.API.STREAM.INFO.{dead_letters}",
            f"$JS.API.STREAM.MSG.GET.{dead_letters}",
            topology.rpc_subject(RPC_CHECK, caller=NOTIFIER_USER),
        ),
        plain=("_INBOX.service.answer", "_R_.answer"),
        subscriptions=(
            topology.rpc_wildcard(RPC_CHECK),
            topology.events_wildcard,
            f"{topology.prefix}.dlq.>",
            topology.alerts_wildcard,
            "_INBOX.>",
        ),
    )
    # The positive signal: its alert reaches an alert subscriber; the log holds nothing.
    received = await alerts.nc.subscribe(topology.alerts_wildcard)
    await round_trip(alerts.nc)
    await notifier.nc.publish(topology.alert_subject("critical", "budget_exceeded"), b"real")
    await round_trip(notifier.nc)
    assert (await received.next_msg(timeout=30)).data == b"real", _states(notifier, alerts)
    info = await service.jetstream().stream_info(topology.event_stream.name)
    assert info.state.messages == 0


async def test_the_query_credential_is_refused_what_the_query_service_does_not_do(
    secured: Secured, service: Client, connect: Callable[[str], Awaitable[Conn]]
) -> None:
    """The query service's credential answers questions alone: publishing any event
    (``PolicyDeleted``, usage as itself or a host, the enforcer's), an alert or a dead
    letter; reading the log, the dead letters or a consumer; asking the services anything;
    moving a worker's consumer on; taking the enforcer's requests, reading the events, the
    alerts or any inbox are refused, and the stream never holds what was refused. (What it
    may do, it does: test_service_nats_users.py.)"""
    query = await connect(QUERY_USER)
    topology = secured.topology
    stream = topology.event_stream.name
    usage = UsageRecorded.SUBJECT
    await _refused_everything(
        query,
        events=(
            topology.event_subject(PolicyDeleted.SUBJECT),
            topology.event_subject(PolicySet.SUBJECT),
            topology.event_subject(RequestBlocked.SUBJECT),
            topology.event_subject(usage, publisher=QUERY_USER),
            topology.event_subject(usage, publisher="host"),
            topology.event_subject(usage),
            topology.dead_letter_subject("spend-v1"),
        ),
        requests=(
            *_log_reads(topology),
            topology.rpc_subject(QUERY_POLICIES, caller=QUERY_USER),
            topology.rpc_subject(RPC_CHECK, caller="host"),
        ),
        plain=(
            f"$JS.ACK.{stream}.spend-v1.1.1.1.0.0",
            topology.alert_subject("critical", "budget_exceeded"),
        ),
        subscriptions=(
            topology.rpc_wildcard(RPC_CHECK),
            topology.events_wildcard,
            f"{topology.prefix}.dlq.>",
            topology.alerts_wildcard,
            "_INBOX.>",
            "$JS.API.>",
        ),
    )
    # The positive signal: its answer reaches an asker's inbox; the log holds nothing.
    inbox = f"_INBOX.service.{uuid.uuid4().hex}"
    answers = await service.subscribe(inbox)
    await round_trip(service)
    await query.nc.publish(inbox, b"answer")
    await round_trip(query.nc)
    assert (await answers.next_msg(timeout=30)).data == b"answer", _states(query, Conn(service))
    info = await service.jetstream().stream_info(stream)
    assert info.state.messages == 0


async def test_the_alerts_credential_receives_alerts_and_nothing_else(
    secured: Secured, connect: Callable[[str], Awaitable[Conn]]
) -> None:
    alerts, service = await connect("alerts"), (await connect("service")).nc
    topology = secured.topology
    received = await alerts.nc.subscribe(f"{topology.prefix}.alerts.>")
    for subject in (topology.events_wildcard, f"{topology.prefix}.rpc.>", "_INBOX.host.>"):
        assert await alerts.refused_subscription(subject), subject
    await alerts.nc.publish(topology.alert_subject("warning", "threshold_reached"), b"forged")
    await alerts.nc.publish(topology.event_subject("usage.recorded"), b"forged")
    await alerts.nc.flush()

    async def both_publishes_refused() -> bool:
        """the server refused both forged publishes"""
        # The error callback runs as its own task, so it can land after flush() returns.
        return sum("permissions violation for publish" in e for e in alerts.errors) == 2

    await wait_for(both_publishes_refused)
    await service.publish(topology.alert_subject("critical", "budget_exceeded"), b"real")
    message = await received.next_msg(timeout=30)
    assert message.data == b"real"


async def test_a_host_records_usage_checks_and_asks_through_the_services(
    secured: Secured, service: Client, db: str, tmp_path: Path
) -> None:
    operator = secured.settings(
        "service", database_url=db, spool_dir=tmp_path / "service", default_limit=None
    )
    host_settings = secured.settings(
        "host", database_url="postgresql://nobody@/none", spool_dir=tmp_path / "host"
    )
    async with enforcement_stack(service, operator) as stack:
        await stack.set_policy(
            policy_id="cap",
            scope=BudgetScope.USER,
            limit_amount="0.01",
            action=LimitAction.BLOCK,
        )
        await stack.enforcer_applies_policies()
        tracker = await start_usage_tracker(host_settings)
        try:
            host = BudgetManager(host_settings, tracker)
            assert [p.policy_id for p in await host.get_policies()] == ["cap"]
            await host.record_usage(usage_event(cost="0.02", user="alice"))
            await tracker.publisher.flush()
            assert len(tracker.publisher.spool) == 0

            async def counted() -> bool:
                """the host's event is in the spend the query service reports"""
                rows = await host.get_spend_summary(scope=BudgetScope.USER)
                return any(r.scope_key == "alice" and r.requests == 1 for r in rows)

            await wait_for(counted, within=30)
            check = await host.check_budget("gpt-4o", estimated_tokens=100, user_id="alice")
            assert not check.allowed
        finally:
            await tracker.close()


async def test_holds_and_limits_belong_to_each_host_credential(
    secured: Secured, service: Client, db: str, tmp_path: Path
) -> None:
    """With real credentials the caller token is the user's, so one host cannot release
    another's hold, and a host refused for its limits leaves the other's checks answered."""
    operator = secured.settings(
        "service", database_url=db, spool_dir=tmp_path / "service", default_limit=None
    )
    hosts = {
        user: secured.settings(
            user,
            database_url="postgresql://nobody@/none",
            spool_dir=tmp_path / user,
            enforcer_timeout=0.5,
        )
        for user in ("host", "host2")
    }
    limited = {"caller_rate": 0.001, "caller_burst": 3}
    dime = Decimal("0.1")
    async with enforcement_stack(service, operator.model_copy(update=limited)) as stack:
        await stack.set_policy(scope=BudgetScope.USER, limit_amount="1", action=LimitAction.BLOCK)
        await stack.enforcer_applies_policies()
        first, second = [await start_usage_tracker(hosts[user]) for user in ("host", "host2")]
        try:
            held = await first.check_budget("gpt-4o", 100, "alice", estimated_cost=dime)
            assert held.allowed and held.reservation_id, held.reason
            for _ in range(10):  # the host spends its burst; a check is refused for it
                throttled = await first.check_budget("gpt-4o", 100, "alice", estimated_cost=dime)
                if not throttled.allowed:
                    break
            answered = await second.check_budget("gpt-4o", 100, "bob", estimated_cost=dime)
            with pytest.raises(Refused, match="another caller"):
                await second.checker.release_reporting(held.reservation_id)
            alices = [h for h in await stack.holds() if h[0] == held.reservation_id]
        finally:
            await first.close()
            await second.close()
    assert "enforcer throttles this caller" in throttled.reason
    assert answered.allowed and answered.enforced, answered.reason
    assert alices  # host2 released nothing of it


async def test_a_host_cannot_have_the_services_answer_onto_the_log_or_the_alerts(
    secured: Secured,
    service: Client,
    db: str,
    tmp_path: Path,
    connect: Callable[[str], Awaitable[Conn]],
) -> None:
    """NATS checks the subject a client publishes to, not the reply subject it names: the
    services answer only to inboxes, so a host cannot write through them."""
    operator = secured.settings("service", database_url=db, spool_dir=tmp_path / "service")
    topology = secured.topology
    async with enforcement_stack(service, operator) as stack:
        await stack.set_policy(policy_id="cap", scope=BudgetScope.USER, limit_amount="1")
        await stack.enforcer_applies_policies()
        alerts: list[str] = []
        watch = await service.subscribe(f"{topology.prefix}.alerts.>")
        host = (await connect("host")).nc
        targets = [
            topology.event_subject(PolicyDeleted.SUBJECT),
            f"{topology.prefix}.alerts.critical.forged",
        ]
        asks = [
            (topology.rpc_subject(RPC_CHECK, caller="host"), b'{"model": "gpt-4o"}'),
            (topology.rpc_subject(RPC_SNAPSHOT, caller="host"), b'{"model": "gpt-4o"}'),
            (topology.rpc_subject(QUERY_POLICIES, caller="host"), b"{}"),
        ]
        for subject, body in asks:
            for target in targets:
                await host.publish(subject, body, reply=target)
            # The positive signal: the same request with an inbox is answered, after
            # the misdirected ones (one connection's messages arrive in order).
            assert (await host.request(subject, body, timeout=10)).data
        await service.flush()
        while True:
            try:
                alerts.append((await watch.next_msg(timeout=0.01)).subject)
            except TimeoutError:
                break
        info = await service.jetstream().stream_info(
            topology.event_stream.name, subjects_filter=">"
        )
        assert set(info.state.subjects) == {topology.event_subject(PolicySet.SUBJECT)}
        assert alerts == []


async def test_the_service_credential_rebuilds_a_projection_from_the_log(
    secured: Secured, service: Client, db: str, tmp_path: Path
) -> None:
    operator = secured.settings("service", database_url=db, spool_dir=tmp_path / "spool")
    await prepare(operator.nats_url, db, operator)
    subject = secured.topology.event_subject(UsageRecorded.SUBJECT)
    await _publish(service, subject, encode(usage_event()))
    version = await rebuild(
        get_projection("spend"), nc=service, database_url=db, topology=secured.topology
    )
    assert version == 2
    assert await rows(db, "SELECT count(*) FROM spend_ledger") == [(1,)]


async def test_migrate_and_doctor_with_the_host_credential_say_which_credential_may(
    secured: Secured, service: Client, db: str, tmp_path: Path
) -> None:
    """A host is refused a stream's info, which the services' credential may ask: migrate
    names the one it needs (admin, which also makes the streams) and how to give it; the
    doctor, which only asks, names the services'."""
    operator = secured.settings("admin", database_url=db, spool_dir=tmp_path / "spool")
    await prepare(operator.nats_url, db, operator)
    host = secured.settings("host", database_url=db, spool_dir=tmp_path / "spool")
    stream_info = f"$JS.API.STREAM.INFO.{secured.topology.event_stream.name}"
    with pytest.raises(PermissionDenied) as raised:
        await prepare(host.nats_url, db, host)
    assert str(raised.value) == (
        f"the NATS user 'host' may not publish to {stream_info}; only an 'admin' credential"
        " may (BUDGET_NATS_USER and BUDGET_NATS_PASSWORD_FILE, or nats_user and"
        " nats_password_file in config.yaml; see docs/security.md)"
    )
    found = await diagnose(host, Options(max_lag=0, days=1))
    [streams] = [f for f in found if f.check == "streams"]
    assert (streams.status, streams.detail) == (
        "problem",
        f"the NATS user 'host' may not publish to {stream_info}",
    )
    assert streams.fix.startswith("only a 'service' credential may"), streams.fix


async def test_no_credential_deletes_the_event_log(
    secured: Secured, service: Client, connect: Callable[[str], Awaitable[Conn]]
) -> None:
    """The log is the source of truth: neither the services' credential nor the admin's
    deletes a stream, purges it or deletes one of its messages."""
    stream = secured.topology.event_stream.name
    subject = secured.topology.event_subject(UsageRecorded.SUBJECT)
    await _publish(service, subject, encode(usage_event()))
    for user in ("service", "admin"):
        nc = (await connect(user)).nc
        js = nc.jetstream()
        for refused, attempt in (
            (f"$JS.API.STREAM.DELETE.{stream}", js.delete_stream(stream)),
            (f"$JS.API.STREAM.PURGE.{stream}", js.purge_stream(stream)),
            (f"$JS.API.STREAM.MSG.DELETE.{stream}", js.delete_msg(stream, 1)),
        ):
            with pytest.raises(PermissionDenied, match="ask the operator"):
                await permitted(nc, refused, attempt)
    assert (await service.jetstream().stream_info(stream)).state.messages == 1


async def test_the_services_credential_can_neither_shrink_nor_remake_a_stream(
    secured: Secured, service: Client
) -> None:
    """The API, the notifier and every worker hold it: a stream update (``max_msgs=1``
    left one event of the log) and a new stream (one on the request subjects would answer
    them with its acknowledgements) are the admin's. Deleting consumers stays: a worker
    recreates its own at each start, a rebuild drops the old version's; the events stay."""
    topology = secured.topology
    stream = topology.event_stream.name
    subject = topology.event_subject(UsageRecorded.SUBJECT)
    for _ in range(3):
        await _publish(service, subject, encode(usage_event()))
    js = service.jetstream()
    config = (await js.stream_info(stream)).config
    config.max_msgs = 1
    with pytest.raises(PermissionDenied, match="only an 'admin' credential may"):
        await permitted(service, f"$JS.API.STREAM.UPDATE.{stream}", js.update_stream(config))
    squatter = f"{stream}_RPC"
    with pytest.raises(PermissionDenied, match="only an 'admin' credential may"):
        await permitted(
            service,
            f"$JS.API.STREAM.CREATE.{squatter}",
            js.add_stream(name=squatter, subjects=[f"{topology.prefix}.rpc.>"]),
        )
    info = await js.stream_info(stream)
    assert info.state.messages == 3 and info.config.max_msgs == -1
    # A consumer of its own it may still make and delete.
    made = await js.add_consumer(stream, durable_name="cursor")
    assert await js.delete_consumer(stream, made.name)


async def test_the_admin_credential_declares_and_changes_the_streams(secured: Secured) -> None:
    """What `budget migrate` does: make the streams, and change one (a limit an operator
    tunes); the services' credential is refused the same at once, naming the admin's."""
    topology = secured.topology
    service = await connect_nats(
        secured.server.url, within=5, **nats_options(secured.settings("service"))
    )
    admin = await connect_nats(
        secured.server.url, within=5, **nats_options(secured.settings("admin"))
    )
    try:
        with pytest.raises(PermissionDenied) as refused:
            await permitted(
                service, "$JS.API.STREAM.>", declare_streams(service.jetstream(), topology)
            )
        js = admin.jetstream()
        await permitted(admin, "$JS.API.STREAM.>", declare_streams(js, topology))
        config = (await js.stream_info(topology.event_stream.name)).config
        config.max_age = 86400 * 3650
        await permitted(admin, "$JS.API.STREAM.>", js.update_stream(config))
        info = await js.stream_info(topology.event_stream.name)
    finally:
        await service.close()
        await admin.close()
    create = f"$JS.API.STREAM.CREATE.{topology.event_stream.name}"
    assert str(refused.value) == (
        f"the NATS user 'service' may not publish to {create};"
        " only an 'admin' credential may (BUDGET_NATS_USER and BUDGET_NATS_PASSWORD_FILE,"
        " or nats_user and nats_password_file in config.yaml; see docs/security.md)"
    )
    assert info.config.max_age == 86400 * 3650 and info.config.deny_purge


async def test_migrate_with_the_services_credential_says_which_one_may(
    secured: Secured, db: str, tmp_path: Path
) -> None:
    """`budget migrate` (``prepare``) on a new log, run as ``service``: refused at once,
    not after a timeout; as ``admin`` it declares the streams."""
    as_service = secured.settings("service", database_url=db, spool_dir=tmp_path / "s")
    with pytest.raises(PermissionDenied, match="only an 'admin' credential may"):
        await prepare(as_service.nats_url, db, as_service)
    as_admin = secured.settings("admin", database_url=db, spool_dir=tmp_path / "a")
    await prepare(as_admin.nats_url, db, as_admin)
