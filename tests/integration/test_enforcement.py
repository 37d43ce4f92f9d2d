"""Pre-call checks on real NATS and PostgreSQL: BLOCK holds, reservations settle, expire
and are released, overlapping policies reserve all or nothing, THROTTLE paces."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client

import services.enforcer
from budget.checks import BudgetExceeded
from budget.config import Settings
from events import (
    BudgetPolicy,
    BudgetScope,
    LimitAction,
    PolicySet,
    RequestBlocked,
    Topology,
    UsageRepriced,
    decode,
    utc_now,
)
from events.rpc import CheckRequest, CheckResult
from services.enforcer import Enforcer, EnforcerConfig, _Pending

from enforcement import EnforcementStack, enforcement_stack, stack_settings
from support import ROOT, rows, wait_for

pytestmark = pytest.mark.integration
DIME = Decimal("0.10")


async def test_block_admits_up_to_the_limit_and_refuses_the_rest(stack: EnforcementStack) -> None:
    await stack.set_policy(limit_amount="0.25", action="block")
    results = [
        await stack.tracker.check_budget("gpt-4o", user_id="u1", estimated_cost=DIME)
        for _ in range(3)
    ]
    assert [r.allowed for r in results] == [True, True, False]
    refused = results[2]
    assert refused.action is LimitAction.BLOCK and refused.enforced
    assert refused.current_spend == Decimal("0.20") and refused.limit == Decimal("0.25")
    assert "would pass its limit" in refused.reason
    assert len(await stack.holds()) == 2


async def test_a_spent_block_limit_refuses_checks_without_an_estimate(
    stack: EnforcementStack,
) -> None:
    """A check with no tokens and no estimated_cost is estimated at $0; once holds reach
    the limit exactly, the enforcer refuses it (and holds nothing), where "spend +
    estimate > limit" admitted every such check at an exhausted budget."""
    await stack.set_policy(limit_amount="0.20", action="block")
    for _ in range(2):
        assert (
            await stack.tracker.check_budget("gpt-4o", user_id="u1", estimated_cost=DIME)
        ).allowed
    free = await stack.tracker.check_budget("gpt-4o", user_id="u1")
    assert not free.allowed and free.enforced and free.estimated_cost == 0
    assert free.current_spend == Decimal("0.20") and free.reservation_id is None
    assert "limit 0.20 is reached" in free.reason
    assert len(await stack.holds()) == 2


async def test_a_second_enforcer_s_holds_are_never_overlooked(stack: EnforcementStack) -> None:
    """Each enforcer judges first on the spend it last saw; what another one reserved
    since must make it read again under the locks, and a release must let it admit."""
    await stack.set_policy(limit_amount="1.00", action="block")
    first, second = stack.enforcer, Enforcer(stack.settings, stack.nc)
    assert first is not None
    await second.start()

    async def ask(enforcer: Enforcer, cost: str) -> CheckResult:
        request = CheckRequest(model="gpt-4o", user_id="u1", estimated_cost=Decimal(cost))
        [result] = await enforcer.decide([_Pending(request, "", stack.settings.caller)])
        return result

    try:
        assert (await ask(first, "0.60")).allowed
        taken_by_second = await ask(second, "0.30")
        assert taken_by_second.allowed
        refused = await ask(first, "0.30")  # it saw 0.60: 0.90 would fit
        assert not refused.allowed and refused.current_spend == Decimal("0.90")
        assert taken_by_second.reservation_id is not None
        await stack.tracker.release_reservation(taken_by_second.reservation_id)
        admitted = await ask(first, "0.30")  # it saw 0.90: 1.20 would not fit
        assert admitted.allowed and admitted.current_spend == Decimal("0.60")
        assert sum(amount for _, _, amount in await stack.holds()) == Decimal("0.90")
    finally:
        await second.stop()


async def test_refusal_publishes_request_blocked(
    stack: EnforcementStack, topology: Topology
) -> None:
    policy = await stack.set_policy(limit_amount="0.05", action="block")
    sub = await stack.nc.subscribe(topology.event_subject(RequestBlocked.SUBJECT))
    result = await stack.tracker.check_budget("gpt-4o", user_id="u1", estimated_cost=DIME)
    assert not result.allowed
    event = decode((await sub.next_msg(timeout=5)).data)
    assert isinstance(event, RequestBlocked)
    assert event.policy_ids == [policy.policy_id] and event.user_id == "u1"


async def test_a_refusal_by_one_policy_reserves_nothing_in_the_others(
    stack: EnforcementStack,
) -> None:
    await stack.set_policy(policy_id="global", limit_amount="100", action="block")
    await stack.set_policy(
        policy_id="project",
        scope="project",
        scope_key="apollo",
        limit_amount="100",
        action="block",
    )
    await stack.set_policy(
        policy_id="alice", scope="user", scope_key="alice", limit_amount="0.15", action="block"
    )
    first = await stack.tracker.check_budget(
        "gpt-4o", user_id="alice", project_id="apollo", estimated_cost=DIME
    )
    assert first.allowed and {p.policy_id for p in first.policies} == {"global", "project", "alice"}
    second = await stack.tracker.check_budget(
        "gpt-4o", user_id="alice", project_id="apollo", estimated_cost=DIME
    )
    assert not second.allowed and second.decided_by == ["alice"]
    holds = await stack.holds()
    assert {(policy, amount) for _, policy, amount in holds} == {
        ("global", DIME),
        ("project", DIME),
        ("alice", DIME),
    }
    assert {reservation for reservation, _, _ in holds} == {first.reservation_id}


async def test_settled_reservation_is_counted_once_as_its_actual_cost(
    stack: EnforcementStack,
) -> None:
    await stack.set_policy(limit_amount="0.30", action="block")
    check = await stack.tracker.check_budget("gpt-4o", user_id="u1", estimated_cost=DIME)
    assert check.allowed and check.reservation_id
    recorded = await stack.tracker.record_usage(
        model="gpt-4o",
        provider="openai",
        input_tokens=1000,
        output_tokens=500,
        user_id="u1",
        reservation_id=check.reservation_id,
    )
    await stack.tracker.flush()

    async def settled() -> bool:
        """the hold is gone"""
        return not await stack.holds()

    await wait_for(settled, within=10)
    after = await stack.tracker.check_budget("gpt-4o", user_id="u1", estimated_cost=DIME)
    assert after.current_spend == recorded.cost  # the actual cost, not cost + estimate


async def test_calls_in_flight_at_midnight_count_against_the_new_day(
    nc: Client,
    nats_url: str,
    db: str,
    topology: Topology,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two calls checked at 23:59:50 cost the day their events are timed in: while one is
    in flight after midnight, the new day's BLOCK window counts its hold; one that was
    recorded before midnight costs the old day only. (Tonight's midnight, so that the
    holds made before it have not expired: events may be timed up to a day ahead.)"""
    settings = stack_settings(nats_url, db, topology, tmp_path, max_clock_skew=86_400)
    async with enforcement_stack(nc, settings) as stack:
        await _calls_in_flight_at_midnight(stack, monkeypatch)


async def _calls_in_flight_at_midnight(
    stack: EnforcementStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert stack.enforcer is not None
    await stack.set_policy(limit_amount="0.25", action="block", period="daily")
    midnight = utc_now().replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    now = midnight + timedelta(seconds=5)

    async def check(at: datetime) -> CheckResult:
        monkeypatch.setattr(services.enforcer, "utc_now", lambda: at)
        request = CheckRequest(model="gpt-4o", user_id="u1", estimated_cost=DIME)
        [result] = await stack.enforcer.decide([_Pending(request, "", stack.settings.caller)])
        return result

    late = [await check(midnight - timedelta(seconds=10)) for _ in range(2)]
    assert all(r.allowed for r in late)
    refused = await check(now)
    assert not refused.allowed and refused.current_spend == 2 * DIME

    await stack.tracker.record_usage(  # $0.10, finished a second before midnight
        model="gpt-4o",
        provider="openai",
        input_tokens=40_000,
        user_id="u1",
        reservation_id=late[0].reservation_id,
        occurred_at=midnight - timedelta(seconds=1),
    )
    await stack.tracker.flush()

    async def settled() -> bool:
        """the call recorded before midnight released its hold"""
        return len(await stack.holds()) == 1

    await wait_for(settled, within=10)
    admitted = await check(now)
    assert admitted.allowed and admitted.current_spend == DIME  # the other one, in flight


async def test_a_provider_is_one_key_however_it_is_spelt(stack: EnforcementStack) -> None:
    """A provider policy set as "OpenAI" applies to a check that names no provider (the
    model's, "openai") and counts usage recorded as "OpenAI"."""
    policy = await stack.set_policy(
        scope="provider", scope_key="OpenAI", limit_amount="0.01", action="block"
    )
    assert policy.scope_key == "openai"
    recorded = await stack.tracker.record_usage(
        model="gpt-4o", provider="OpenAI", input_tokens=1000, output_tokens=500, user_id="u1"
    )
    assert recorded.provider == "openai"
    await stack.tracker.flush()

    async def counted() -> bool:
        """the check counts the recorded spend under the policy"""
        check = await stack.tracker.check_budget("gpt-4o", user_id="u1", estimated_cost=DIME)
        if check.reservation_id:
            await stack.tracker.release_reservation(check.reservation_id)
        return check.current_spend == recorded.cost and not check.allowed

    await wait_for(counted, within=10)


async def test_a_provider_policy_set_before_the_one_spelling_applies(
    stack: EnforcementStack,
) -> None:
    """A policy an earlier release stored as "Anthropic" (published here as it was) is
    read as "anthropic", the key checks and usage have."""
    legacy = BudgetPolicy(
        policy_id="legacy",
        name="legacy",
        scope=BudgetScope.PROVIDER,
        scope_key="Anthropic",
        limit_amount=Decimal("0.05"),
        action=LimitAction.BLOCK,
    )
    await stack.tracker.publisher.publish(PolicySet(occurred_at=utc_now(), policy=legacy))
    await stack.tracker.flush()

    async def applies() -> bool:
        """the enforcer judges a Claude call by it"""
        check = await stack.tracker.check_budget(
            "claude-sonnet-4-5", user_id="u1", estimated_cost=DIME, reserve=False
        )
        return [p.policy_id for p in check.policies] == ["legacy"] and not check.allowed

    await wait_for(applies, within=10)


async def test_an_unpriced_call_holds_its_estimate_until_it_is_priced(
    stack: EnforcementStack,
) -> None:
    """A model without a price is checked with the caller's estimate and recorded
    unpriced: it counts nothing, so its hold stays and the BLOCK limit keeps counting the
    estimate, until a correction prices the call; then the price counts instead."""
    await stack.set_policy(limit_amount="0.25", action="block")
    model = "in-house-model-7"  # in no price layer

    async def check(reserve: bool = True) -> CheckResult:
        return await stack.tracker.check_budget(
            model, user_id="u1", estimated_cost=DIME, reserve=reserve
        )

    first = await check()
    assert first.allowed and first.reservation_id
    recorded = await stack.tracker.record_usage(
        model=model,
        provider="acme",
        input_tokens=10,
        output_tokens=5,
        user_id="u1",
        reservation_id=first.reservation_id,
    )
    assert recorded.cost is None
    await stack.tracker.flush()

    async def counted() -> bool:
        """the live spend projection has counted the unpriced call"""
        found = await rows(
            stack.settings.database_url,
            "SELECT 1 FROM spend_ledger WHERE reservation_id = %s",
            (first.reservation_id,),
        )
        return bool(found)

    await wait_for(counted, within=10)
    assert (await check()).allowed  # the first call's $0.10 still held, and this one's
    third = await check()
    assert not third.allowed and third.current_spend == 2 * DIME
    priced = UsageRepriced(
        occurred_at=recorded.occurred_at,
        corrects=recorded.event_id,
        cost=Decimal("0.01"),
        provider=recorded.provider,
        model=model,
        user_id="u1",
        reason="priced at last",
    )
    await stack.tracker.publisher.publish(priced)
    await stack.tracker.flush()

    async def repriced() -> bool:
        """the call counts at its price now, not its hold (the second hold stays)"""
        return (await check(reserve=False)).current_spend == Decimal("0.01") + DIME

    await wait_for(repriced, within=10)


async def test_unsettled_reservations_expire_and_are_released(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    config = EnforcerConfig(reservation_ttl=0.5, cleanup_interval=0.2)
    async with enforcement_stack(nc, settings, config) as stack:
        await stack.set_policy(limit_amount="0.10", action="block")
        held = await stack.tracker.check_budget("gpt-4o", user_id="u1", estimated_cost=DIME)
        blocked = await stack.tracker.check_budget("gpt-4o", user_id="u1", estimated_cost=DIME)
        assert held.allowed and not blocked.allowed
        await asyncio.sleep(0.6)
        again = await stack.tracker.check_budget("gpt-4o", user_id="u1", estimated_cost=DIME)
        assert again.allowed, again.reason

        async def released() -> bool:
            """the expired hold was deleted by the scheduled job"""
            remaining = await stack.holds()
            return held.reservation_id not in {r for r, _, _ in remaining}

        await wait_for(released, within=5)


async def test_decorated_call_that_raises_releases_its_reservation(
    stack: EnforcementStack,
) -> None:
    await stack.set_policy(limit_amount="1", action="block")

    @stack.tracker.track_llm_call(model="gpt-4o", user_id="u1", estimated_cost=DIME)
    async def failing_call() -> dict[str, object]:
        assert len(await stack.holds()) == 1  # reserved before the call
        raise RuntimeError("provider timed out")

    with pytest.raises(RuntimeError, match="provider timed out"):
        await failing_call()
    assert await stack.holds() == []


async def test_decorated_call_is_refused_with_budget_exceeded(stack: EnforcementStack) -> None:
    await stack.set_policy(limit_amount="0.01", action="block")
    calls = []

    @stack.tracker.track_llm_call(model="gpt-4o", user_id="u1", estimated_cost=DIME)
    async def call() -> dict[str, object]:
        calls.append(1)
        return {"usage": {"prompt_tokens": 10, "completion_tokens": 5}}

    with pytest.raises(BudgetExceeded) as refused:
        await call()
    assert calls == [] and refused.value.result.action is LimitAction.BLOCK


async def test_decorated_call_records_usage_from_the_response(stack: EnforcementStack) -> None:
    await stack.set_policy(limit_amount="1", action="block")

    @stack.tracker.track_llm_call(model="gpt-4o", user_id="u1", estimated_cost=DIME)
    async def call() -> dict[str, object]:
        return {"usage": {"prompt_tokens": 1000, "completion_tokens": 100}}

    await call()
    await stack.tracker.flush()

    async def counted() -> bool:
        """the call's usage reached the spend projection and settled the hold"""
        found = await rows(
            stack.settings.database_url,
            "SELECT sum(requests) FROM spend_buckets WHERE scope = 'user' AND scope_key = 'u1'",
        )
        return found == [(1,)] and not await stack.holds()

    await wait_for(counted, within=10)


async def test_warn_only_policies_are_answered_locally(stack: EnforcementStack) -> None:
    await stack.set_policy(limit_amount="0.05", action="warn")
    result = await stack.tracker.check_budget("gpt-4o", user_id="u1", estimated_cost=DIME)
    assert result.allowed and not result.enforced
    assert result.action is LimitAction.WARN and result.reservation_id is None
    assert await stack.holds() == []


async def test_a_new_policy_is_seen_by_the_next_check(stack: EnforcementStack) -> None:
    assert (await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME)).allowed
    await stack.set_policy(limit_amount="0.01", action="block")
    assert not (await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME)).allowed


async def test_throttle_paces_spend_past_the_soft_limit(stack: EnforcementStack) -> None:
    now = utc_now()
    quarter = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
    # 50-56 % of the period has passed: the pro-rata share of $10 is $5.00-5.63.
    await stack.set_policy(
        limit_amount="10",
        action="throttle",
        soft_limit_percent=30,
        period="custom",
        custom_start=quarter - timedelta(hours=2),
        custom_end=quarter + timedelta(hours=2),
    )
    small = await stack.tracker.check_budget("gpt-4o", estimated_cost=Decimal("2"))
    assert small.allowed  # under the soft limit
    ahead = await stack.tracker.check_budget("gpt-4o", estimated_cost=Decimal("4"))
    assert not ahead.allowed and ahead.action is LimitAction.THROTTLE
    assert ahead.retry_after is not None and ahead.retry_after > 0
    within_share = await stack.tracker.check_budget("gpt-4o", estimated_cost=Decimal("2"))
    assert within_share.allowed


async def test_block_fails_closed_when_the_enforcer_is_unreachable(
    stack: EnforcementStack,
) -> None:
    await stack.set_policy(limit_amount="100", action="block")
    assert stack.enforcer is not None
    await stack.enforcer.stop()
    result = await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME)
    assert not result.allowed
    assert "enforcer unavailable" in result.reason and "fail_open" in result.reason


async def test_fail_open_allows_when_the_enforcer_is_unreachable(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path, fail_open=True)
    async with enforcement_stack(nc, settings) as stack:
        assert stack.enforcer is not None
        await stack.enforcer.stop()
        result = await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME)
        assert result.allowed and "fail_open" in result.reason


async def test_configured_policies_are_published_once(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path, default_limit=Decimal(100))
    async with enforcement_stack(nc, settings) as stack:

        async def applied() -> bool:
            """the default user policy is live"""
            policies = await stack.manager.get_policies(BudgetScope.USER)
            return [p.policy_id for p in policies] == ["default-user"]

        await wait_for(applied, within=10)
        assert stack.enforcer is not None
        assert await stack.enforcer.publish_configured_policies() == []


def burst_client(
    settings: Settings, topology: Topology, spool: Path, count: int
) -> subprocess.Popen[bytes]:
    """A host-app process that sends ``count`` checks at once when told to go."""
    script = Path(__file__).with_name("check_burst.py")
    args = [topology.prefix, settings.nats_url, settings.database_url, str(spool), str(count)]
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
    )


async def test_1000_concurrent_requests_from_4_processes_admit_exactly_50(
    stack: EnforcementStack, topology: Topology, tmp_path: Path
) -> None:
    """$0.10 each against $5.00: the 51st would pass the limit, whoever sends it."""
    await stack.set_policy(limit_amount="5.00", action="block")
    settings = stack.settings
    clients = [burst_client(settings, topology, tmp_path / f"spool-{i}", 250) for i in range(4)]
    for client in clients:
        assert client.stdout is not None
        assert await asyncio.to_thread(client.stdout.readline) == b"ready\n"
    await stack.nc.publish(f"{topology.prefix}.test.go", b"")
    outputs = [await asyncio.to_thread(c.communicate, timeout=120) for c in clients]
    assert [c.returncode for c in clients] == [0, 0, 0, 0]
    summaries = [json.loads(out.splitlines()[-1]) for out, _ in outputs]
    admitted = [r for s in summaries for r in s["admitted"]]
    assert len(admitted) == 50 and len(set(admitted)) == 50
    assert sum(s["refused"] for s in summaries) == 950
    assert {why for s in summaries for why in s["why"]} == {"block by policy 'test policy'"}

    async def all_settled() -> bool:
        """the 50 calls' usage is counted and every hold settled"""
        found = await rows(
            settings.database_url,
            "SELECT sum(cost), sum(requests) FROM spend_buckets WHERE scope = 'global'",
        )
        return found == [(Decimal("5.00"), 50)] and not await stack.holds()

    await wait_for(all_settled, within=30)


async def test_manager_sets_reads_and_deletes_policies(stack: EnforcementStack) -> None:
    user = await stack.set_policy(name="alice cap", scope="user", scope_key="a", limit_amount=5)
    everyone = await stack.set_policy(name="global cap", limit_amount=50)
    manager = stack.manager
    assert await manager.get_policy(user.policy_id) == user
    assert await manager.get_policies(BudgetScope.USER) == [user]
    assert {p.policy_id for p in await manager.get_policies()} == {
        user.policy_id,
        everyone.policy_id,
    }
    assert await manager.delete_policy(user.policy_id)
    assert await manager.get_policy(user.policy_id) is None
    assert not await manager.delete_policy(user.policy_id)


async def test_manager_spend_summary_reads_the_spend_projection(stack: EnforcementStack) -> None:
    recorded = await stack.manager.record_usage(
        model="gpt-4o", provider="openai", input_tokens=1000, user_id="summary-user"
    )
    await stack.tracker.flush()

    async def summarised() -> bool:
        """the usage shows in this month's user totals"""
        rows = await stack.manager.get_spend_summary(scope=BudgetScope.USER)
        return [(r.scope_key, r.cost, r.requests) for r in rows] == [
            ("summary-user", recorded.cost, 1)
        ]

    await wait_for(summarised, within=10)
