"""The enforcer, the notifier and the query service on NATS users of their own (roles
``enforcer``, ``notifier`` and ``query``, events.permissions) over a real nats-server with
the config ``budget up`` writes: each does its whole job with its credential and gets no
refusal (what each is refused: test_nats_permissions.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from budget.natsconn import connect_nats, nats_options
from budget.rpc import ask
from budget.spool import Spool
from events import Alert, BudgetPolicy, BudgetScope, PolicySet, RequestBlocked, utc_now
from events.permissions import ENFORCER_USER, NOTIFIER_USER, QUERY_USER, SERVICE_USER
from events.queries import QUERY_POLICIES, PoliciesAnswer, PoliciesQuery
from events.rpc import (
    RPC_CHECK,
    RPC_RELEASE,
    RPC_SNAPSHOT,
    CallAttributes,
    CheckRequest,
    CheckResult,
    ReleaseRequest,
    ReleaseResult,
    Snapshot,
)
from services.enforcer import Enforcer
from services.notifier import NotifierConfig
from services.ops import prepare
from services.query_service import QueryService

from alerting import notifier, outbox, queue_alerts
from enforcement import enforcement_stack, projection_workers
from secured_nats import Secured
from support import publish, rows, wait_for

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def _connected(secured: Secured, user: str) -> AsyncIterator[tuple[Client, list[str]]]:
    """A connection as ``user``, and the errors the server sent it (its refusals)."""
    errors: list[str] = []

    async def record(exc: Exception) -> None:
        errors.append(str(exc))

    options = nats_options(secured.settings(user))
    nc = await connect_nats(secured.server.url, within=5, error_cb=record, **options)
    try:
        yield nc, errors
    finally:
        await nc.close()


async def test_the_enforcer_credential_answers_every_caller_and_publishes_its_events(
    secured: Secured, service: Client, db: str, tmp_path: Path
) -> None:
    """As ``enforcer``: it publishes its configuration's policy (``PolicySet``) at start,
    answers a host's checks (from the hosts' account), refuses one over the limit and
    publishes ``RequestBlocked``, releases the host's hold for the host and another
    host's for the services' credential, which it does not limit (as when it ran as
    ``service`` itself), and answers a snapshot."""
    operator = secured.settings(
        SERVICE_USER, database_url=db, spool_dir=tmp_path / "service", default_limit=None
    )
    own = secured.settings(
        ENFORCER_USER,
        database_url=db,
        spool_dir=tmp_path / "enforcer",
        default_limit=Decimal(1),
        default_action="block",
        caller_burst=3,  # a host's three requests below, and none refilled meanwhile
        caller_rate=0.001,
    )
    topology = secured.topology
    async with (
        enforcement_stack(service, operator, enforcer=False),
        _connected(secured, ENFORCER_USER) as (enforcer_nc, refusals),
        _connected(secured, "host") as (host, _),
        _connected(secured, "host2") as (host2, _),
    ):
        enforcer = Enforcer(own, enforcer_nc)
        await enforcer.start()
        try:

            async def check(nc: Client, caller: str, cost: str) -> CheckResult:
                request = CheckRequest(model="gpt-4o", user_id="ann", estimated_cost=Decimal(cost))
                subject = topology.rpc_subject(RPC_CHECK, caller=caller)
                # as host apps ask: the hosts' account may take a moment to see a new
                # service's subscription ("no responders" otherwise)
                return await ask(nc, subject, request, CheckResult, within=30, await_responder=True)

            async def release(nc: Client, caller: str, reservation_id: str | None) -> int:
                assert reservation_id is not None
                request = ReleaseRequest(reservation_id=reservation_id)
                subject = topology.rpc_subject(RPC_RELEASE, caller=caller)
                answer = await ask(
                    nc, subject, request, ReleaseResult, within=30, await_responder=True
                )
                return answer.released

            async def applies_its_policy() -> bool:
                """the default user policy the enforcer published is applied"""
                return bool((await check(service, SERVICE_USER, "0")).policies)

            await wait_for(applies_its_policy, within=60)
            refused = await check(host, "host", "5")
            assert not refused.allowed
            held = await check(host, "host", "0.1")
            assert held.allowed and held.reservation_id
            assert await release(host, "host", held.reservation_id) >= 1
            other = await check(host2, "host2", "0.1")
            assert await release(service, SERVICE_USER, other.reservation_id) >= 1
            for _ in range(10):  # the services' caller is not limited (a host past 3 is)
                assert (await check(service, SERVICE_USER, "0")).allowed
            asked = topology.rpc_subject(RPC_SNAPSHOT, caller=SERVICE_USER)
            snapshot = await ask(
                service, asked, CallAttributes(model="gpt-4o", user_id="ann"), Snapshot, within=30
            )
            assert [w.policy.policy_id for w in snapshot.windows] == [
                p.policy_id for p in refused.policies
            ]
        finally:
            await enforcer.stop()

        async def stored() -> bool:
            """the log holds the enforcer's policy and its refusal"""
            info = await service.jetstream().stream_info(
                topology.event_stream.name, subjects_filter=">"
            )
            subjects = info.state.subjects or {}
            return all(
                subjects.get(topology.event_subject(event.SUBJECT)) == 1
                for event in (PolicySet, RequestBlocked)
            )

        await wait_for(stored)
    assert refusals == []
    # JetStream acknowledged both on the enforcer's own inbox: nothing was left to re-send
    spool = Spool(own.spool_dir / "enforcer")
    try:
        assert spool.oldest(10) == []
    finally:
        spool.close()


async def test_the_notifier_credential_sends_alerts_on_nats(
    secured: Secured, service: Client, db: str, tmp_path: Path
) -> None:
    """As ``notifier``: the alerts queued for the NATS channel reach an alert subscriber
    (the ``alerts`` credential) and are recorded as sent."""
    operator = secured.settings(SERVICE_USER, database_url=db, spool_dir=tmp_path / "service")
    await prepare(operator.nats_url, db, operator)
    own = secured.settings(NOTIFIER_USER, database_url=db, spool_dir=tmp_path / "notifier")
    async with (
        _connected(secured, "alerts") as (alerts, _),
        _connected(secured, NOTIFIER_USER) as (notifier_nc, refusals),
    ):
        received = await alerts.subscribe(secured.topology.alerts_wildcard)
        await alerts.flush()
        queued = await queue_alerts(db, 2, channel="nats")
        async with notifier(notifier_nc, own, NotifierConfig(poll_interval=0.2)):
            got = [await received.next_msg(timeout=30) for _ in queued]

            async def recorded() -> bool:
                """both deliveries are recorded as sent"""
                return [status for _, _, status, _ in await outbox(db)] == ["sent", "sent"]

            await wait_for(recorded)
    assert [str(Alert.model_validate_json(m.data).alert_id) for m in got] == queued
    assert refusals == []


async def test_alerts_a_credential_may_not_publish_stay_queued_saying_why(
    secured: Secured, service: Client, db: str, tmp_path: Path
) -> None:
    """A notifier started with the host's credential (the one a shell has exported for its
    app): the server refuses each alert it publishes, and only says so asynchronously.
    They were recorded sent while no subscriber got one; they stay queued, retried, with
    the refusal as their last error, and go out once a credential that may is used."""
    operator = secured.settings(SERVICE_USER, database_url=db, spool_dir=tmp_path / "service")
    await prepare(operator.nats_url, db, operator)
    host = secured.settings("host", database_url=db, spool_dir=tmp_path / "host")
    queued = await queue_alerts(db, 2, channel="nats")
    # As FastStream connects a service: not through connect_nats.
    host_nc = await nats.connect(secured.server.url, **nats_options(host))
    try:
        async with notifier(host_nc, host, NotifierConfig(poll_interval=0.2, max_backoff=0.5)):

            async def refused() -> bool:
                """the refusal is recorded as the deliveries' last error, twice"""
                found = await rows(
                    db, "SELECT status, attempts, last_error FROM alert_outbox ORDER BY seq"
                )
                return all(attempts >= 2 and why for _, attempts, why in found)

            await wait_for(refused)
    finally:
        await host_nc.close()
    found = await rows(db, "SELECT status, last_error FROM alert_outbox ORDER BY seq")
    assert [status for status, _ in found] == ["pending", "pending"]
    assert found[0][1].startswith(
        f"PermissionDenied: the NATS user 'host' may not publish to"
        f" {secured.topology.prefix}.alerts.warning.threshold_warning"
    ), found

    own = secured.settings(NOTIFIER_USER, database_url=db, spool_dir=tmp_path / "notifier")
    async with (
        _connected(secured, "alerts") as (alerts, _),
        _connected(secured, NOTIFIER_USER) as (notifier_nc, _),
    ):
        received = await alerts.subscribe(secured.topology.alerts_wildcard)
        await alerts.flush()
        async with notifier(notifier_nc, own, NotifierConfig(poll_interval=0.2)):
            got = [await received.next_msg(timeout=30) for _ in queued]
    assert [str(Alert.model_validate_json(m.data).alert_id) for m in got] == queued


async def test_the_query_credential_answers_every_callers_questions(
    secured: Secured, service: Client, db: str, tmp_path: Path
) -> None:
    """As ``query``: a policy on the log reaches a host's question (from the hosts'
    account, answered on ``_R_.``) and an admin command's (the services' account,
    answered on ``_INBOX.``), read from PostgreSQL."""
    operator = secured.settings(SERVICE_USER, database_url=db, spool_dir=tmp_path / "service")
    await prepare(operator.nats_url, db, operator)
    own = secured.settings(QUERY_USER, database_url=db)
    policy = BudgetPolicy(
        name="team", scope=BudgetScope.USER, scope_key="ann", limit_amount=Decimal(5)
    )
    await publish(service, secured.topology, [PolicySet(occurred_at=utc_now(), policy=policy)])
    async with (
        projection_workers(service, operator, "policies"),
        _connected(secured, QUERY_USER) as (query_nc, refusals),
        _connected(secured, "host") as (host, _),
    ):
        query_service = QueryService(own, query_nc)
        await query_service.start()
        try:

            async def asked(nc: Client, caller: str) -> list[str]:
                subject = secured.topology.rpc_subject(QUERY_POLICIES, caller=caller)
                # as a host app asks: the server may pass on the query service's
                # interest to the hosts' account a little after it subscribed
                answer = await ask(
                    nc, subject, PoliciesQuery(), PoliciesAnswer, within=30, await_responder=True
                )
                return [p.policy_id for p in answer.policies]

            async def host_reads_the_policy() -> bool:
                """the policies worker applied the policy the host asks about"""
                return await asked(host, "host") == [policy.policy_id]

            await wait_for(host_reads_the_policy, within=60)
            assert await asked(service, SERVICE_USER) == [policy.policy_id]
        finally:
            await query_service.stop()
    assert refusals == []
