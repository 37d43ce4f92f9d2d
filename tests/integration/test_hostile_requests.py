"""No single request stops a request/reply service: a burst of hostile requests to the
enforcer and the query service on the real NATS is answered (an error, never silence), and
an honest request after it gets the right answer. An answer too big to send is refused
at once, not left to time out."""

from __future__ import annotations

import asyncio
import functools
import json
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client
from pydantic import BaseModel, ValidationError

from budget.rpc import Refused, ask
from events import BudgetPolicy, BudgetScope, PolicySet, RequestBlocked, Topology, decode, utc_now
from events.queries import (
    QUERY_POLICIES,
    QUERY_REPORT,
    QUERY_SPEND,
    PoliciesAnswer,
    PoliciesQuery,
    SpendAnswer,
)
from events.rpc import (
    RPC_CHECK,
    RPC_RELEASE,
    RPC_SNAPSHOT,
    CheckRequest,
    CheckResult,
    RpcError,
    Snapshot,
)

from enforcement import EnforcementStack, enforcement_stack, stack_settings
from support import publish

pytestmark = pytest.mark.integration
ANSWER_WITHIN = 10.0
LONG = "u" * 200  # as long as CheckRequest allows; the refusal's reason quotes it


def _json(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def _check(**fields: object) -> bytes:
    return _json(**{"model": "gpt-4o", "user_id": "mallory", "estimated_cost": "0.1", **fields})


NOT_JSON = [b"", b"{", b"\xff\xfe\x00", b"null", b"[]", b"42", b'"x"', b"[" * 100_000]
HOSTILE_CHECKS = [
    *NOT_JSON,
    _check(estimated_cost="1" + "0" * 600),
    _check(estimated_cost="1e600"),
    _check(estimated_cost="1e-600"),
    _check(estimated_cost="0." + "0" * 600 + "1"),
    _check(estimated_cost="NaN"),
    _check(estimated_cost="-Infinity"),
    _check(estimated_cost="-1"),
    _check(estimated_cost=[]),
    _check(estimated_cost={"$gt": 0}),
    _check(estimated_cost=True),
    _check(model=5),
    _check(model="m" * 201),
    _check(user_id=LONG),
    _check(user_id=LONG, project_id=LONG, provider="p" * 100, model="m" * 200),
    _check(user_id=LONG, estimated_cost="9" * 40),
    _check(user_id=LONG, estimated_cost="0.3"),  # refused: over the limit
    _check(user_id="nul\x00byte"),
    _check(reserve="maybe"),
    _check(ttl_seconds=-1),
    _check(ttl_seconds="NaN"),
    _check(unknown_field=1),
]
HOSTILE_RELEASES = [*NOT_JSON, _json(reservation_id="r" * 101), _json(reservation_id="\x00")]
HOSTILE_SNAPSHOTS = [*NOT_JSON, _json(model="m" * 200, user_id=LONG, project_id=LONG)]
HOSTILE_QUERIES = [
    *NOT_JSON,
    _json(scope="galaxy"),
    _json(period="fortnightly"),
    _json(at="99999-01-01T00:00:00Z"),
    _json(at="9999-12-31T23:59:59Z"),
    _json(at="0001-01-01T00:00:00Z"),
    _json(period="daily", at="9999-12-31T23:59:59+00:00"),
]


async def answered(nc: Client, subject: str, payload: bytes, *expected: type[BaseModel]) -> None:
    """``payload`` got an answer: one of ``expected`` or an ``RpcError``."""
    reply = await nc.request(subject, payload, timeout=ANSWER_WITHIN)
    for model in (*expected, RpcError):
        try:
            model.model_validate_json(reply.data)
            return
        except ValidationError:
            continue
    raise AssertionError(f"{subject} answered {payload[:80]!r} with {reply.data[:200]!r}")


async def burst(
    nc: Client, subject: str, payloads: list[bytes], *expected: type[BaseModel]
) -> None:
    await asyncio.gather(*(answered(nc, subject, p, *expected) for p in payloads))


async def test_a_burst_of_hostile_requests_leaves_the_enforcer_deciding(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    async with enforcement_stack(nc, settings) as stack:
        await stack.set_policy(
            name="p" * 200, scope=BudgetScope.USER, limit_amount="0.25", action="block"
        )
        rpc = functools.partial(settings.topology.rpc_subject, caller=settings.caller)
        await stack.enforcer_applies_policies()
        blocked = await nc.subscribe(topology.event_subject(RequestBlocked.SUBJECT))
        await asyncio.gather(
            burst(nc, rpc(RPC_CHECK), HOSTILE_CHECKS, CheckResult),
            burst(nc, rpc(RPC_RELEASE), HOSTILE_RELEASES),
            burst(nc, rpc(RPC_SNAPSHOT), HOSTILE_SNAPSHOTS, Snapshot),
            honest_checks_are_decided(stack, "during"),
        )
        await honest_checks_are_decided(stack, "after")
        # Each refusal is published, its reason (which quotes the 200-character policy
        # name) clipped to the contract's length: the honest third checks, and a check
        # over the limit under a 200-character user id.
        refusals: dict[str | None, RequestBlocked] = {}
        while len(refusals) < 3:
            event = decode((await blocked.next_msg(timeout=ANSWER_WITHIN)).data)
            assert isinstance(event, RequestBlocked)
            if event.user_id in ("during", "after", LONG):
                refusals[event.user_id] = event
        assert refusals[LONG].estimated_cost == Decimal("0.3")
        assert all(e.reason.startswith(f"block by policy '{'p' * 200}'") for e in refusals.values())


async def honest_checks_are_decided(stack: EnforcementStack, user: str) -> None:
    """Three checks of $0.10 against a $0.25 limit: two admitted, the third refused."""
    subject = stack.settings.topology.rpc_subject(RPC_CHECK, caller=stack.settings.caller)
    dime = CheckRequest(model="gpt-4o", user_id=user, estimated_cost=Decimal("0.10"))
    results = [await ask(stack.nc, subject, dime, CheckResult, within=ANSWER_WITHIN) for _ in "abc"]
    assert [r.allowed for r in results] == [True, True, False]
    assert all(r.enforced for r in results)
    assert results[2].current_spend == Decimal("0.20")


async def test_a_burst_of_hostile_queries_leaves_the_query_service_answering(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    async with enforcement_stack(nc, settings) as stack:
        policy = await stack.set_policy(scope=BudgetScope.USER, limit_amount="5")
        rpc = functools.partial(settings.topology.rpc_subject, caller=settings.caller)
        await asyncio.gather(
            burst(nc, rpc(QUERY_POLICIES), HOSTILE_QUERIES, PoliciesAnswer),
            burst(nc, rpc(QUERY_SPEND), HOSTILE_QUERIES, SpendAnswer),
            burst(nc, rpc(QUERY_REPORT), NOT_JSON),
        )
        answer = await ask(
            nc, rpc(QUERY_POLICIES), PoliciesQuery(), PoliciesAnswer, within=ANSWER_WITHIN
        )
        assert answer.policies == [policy]


async def test_an_answer_too_big_for_nats_is_refused_and_the_next_question_answered(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    many = [
        PolicySet(
            occurred_at=utc_now(),
            policy=BudgetPolicy(policy_id=f"p{i}", name="n" * 200, limit_amount=Decimal(i)),
        )
        for i in range(3000)
    ]  # ~1.3 MB of policies: more than one NATS message can carry
    async with enforcement_stack(nc, settings, enforcer=False) as stack:
        await publish(nc, topology, many)
        mine = await stack.set_policy(scope=BudgetScope.USER, scope_key="me", limit_amount="5")
        rpc = functools.partial(settings.topology.rpc_subject, caller=settings.caller)
        with pytest.raises(Refused, match="answer not sent"):
            await ask(nc, rpc(QUERY_POLICIES), PoliciesQuery(), PoliciesAnswer, within=30)
        users = PoliciesQuery(scope=BudgetScope.USER)
        answer = await ask(nc, rpc(QUERY_POLICIES), users, PoliciesAnswer, within=ANSWER_WITHIN)
        assert answer.policies == [mine]
