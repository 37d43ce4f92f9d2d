"""Checks mean what they say, on real NATS and PostgreSQL: a new BLOCK policy binds every
tracker as soon as ``set_policy`` returns, and a tracker that cannot reach the enforcer
allows only what its last snapshot shows no BLOCK/THROTTLE policy governs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client

import budget.checks
from budget.checks import BudgetCheckFailed
from budget.config import Settings
from budget.policy_log import POLICY_NEWS_WITHIN, PolicyLog
from budget.tracker import start_usage_tracker
from events import LimitAction, Topology, utc_now
from events.rpc import CallAttributes, CheckResult

from enforcement import EnforcementStack, enforcement_stack, stack_settings
from support import ROOT

pytestmark = pytest.mark.integration
DIME = Decimal("0.10")


def busy_tracker(settings: Settings, spool: Path, go: Path) -> subprocess.Popen[bytes]:
    script = Path(__file__).with_name("busy_tracker.py")
    args = [settings.subject_prefix, settings.nats_url, settings.database_url, str(spool), str(go)]
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
    )


async def test_a_new_block_policy_binds_a_busy_tracker_in_another_process(
    stack: EnforcementStack, tmp_path: Path
) -> None:
    """The other process has cached a WARN-only snapshot and its loop is too busy to
    read any notification; its first check after ``set_policy`` returns is still refused."""
    await stack.set_policy(name="watch", limit_amount="100", action="warn")
    go = tmp_path / "go"
    other = busy_tracker(stack.settings, tmp_path / "spool-b", go)
    try:
        assert other.stdout is not None
        assert await asyncio.to_thread(other.stdout.readline) == b"ready\n"
        await stack.set_policy(name="hard cap", limit_amount="0.01", action="block")
        go.touch()
        output, _ = await asyncio.to_thread(other.communicate, timeout=60)
    finally:
        if other.poll() is None:
            other.kill()
    assert other.returncode == 0
    result = CheckResult.model_validate_json(output.splitlines()[-1])
    assert not result.allowed and result.enforced
    assert result.action is LimitAction.BLOCK and "'hard cap'" in result.reason


async def test_a_warn_only_snapshot_allows_while_the_enforcer_is_down(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path, cache_ttl=0)
    async with enforcement_stack(nc, settings) as stack:
        await stack.set_policy(name="watch", limit_amount="100", action="warn")
        assert (await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME)).allowed
        assert stack.enforcer is not None
        await stack.enforcer.stop()
        result = await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME)
    assert result.allowed and not result.enforced
    assert "enforcer unavailable" in result.reason
    assert "no BLOCK or THROTTLE policy" in result.reason


async def test_a_call_of_a_model_without_a_price_is_never_an_unexplained_zero(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    """With no policy at all as with a WARN one: the check says the cost is unknown."""
    settings = stack_settings(nats_url, db, topology, tmp_path)
    async with enforcement_stack(nc, settings) as stack:
        alone = await stack.tracker.check_budget("no-such-model-x1", estimated_tokens=500)
        await stack.set_policy(name="watch", limit_amount="100", action="warn")
        watched = await stack.tracker.check_budget("no-such-model-x1", estimated_tokens=500)
    for result in (alone, watched):
        assert result.allowed
        assert "model 'no-such-model-x1' has no price" in result.reason, result.reason


async def test_a_check_under_a_misspelt_provider_says_so_not_that_the_model_is_unpriced(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    async with enforcement_stack(nc, settings) as stack:
        await stack.set_policy(name="watch", limit_amount="100", action="warn")
        watched = await stack.tracker.check_budget("gpt-4o", 500, provider="opnai")
        await stack.set_policy(name="cap", limit_amount="100", action="block")
        capped = await stack.tracker.check_budget("gpt-4o", 500, provider="opnai")
    assert watched.allowed and not capped.allowed
    for result in (watched, capped):
        assert (
            "provider 'opnai' is unknown: did you mean 'openai'? model 'gpt-4o' has no price"
            in result.reason
        ), result.reason


async def test_a_snapshot_with_a_block_policy_refuses_while_the_enforcer_is_down(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path, cache_ttl=0)
    async with enforcement_stack(nc, settings) as stack:
        await stack.set_policy(name="hard cap", limit_amount="100", action="block")
        first = await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME, reserve=False)
        assert first.allowed and first.enforced
        assert stack.enforcer is not None
        await stack.enforcer.stop()
        result = await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME)
    assert not result.allowed
    assert "enforcer unavailable" in result.reason and "'hard cap'" in result.reason
    assert "would pass" not in result.reason


async def test_a_tracker_that_knows_nothing_fails_closed_and_says_so(
    nats_url: str, topology: Topology, tmp_path: Path
) -> None:
    """No enforcer runs under this prefix and the tracker has never seen a snapshot."""
    settings = stack_settings(nats_url, "postgresql://unused@127.0.0.1:1/x", topology, tmp_path)
    tracker = await start_usage_tracker(settings.model_copy(update={"enforcer_timeout": 0.5}))
    calls = []

    @tracker.track_llm_call(model="gpt-4o", estimated_cost=DIME)
    async def call() -> None:
        calls.append(1)

    try:
        result = await tracker.check_budget("gpt-4o", estimated_cost=DIME)
        with pytest.raises(BudgetCheckFailed, match="nothing is known"):
            await call()
    finally:
        await tracker.close()
    assert not result.allowed and not result.enforced and calls == []
    assert "enforcer unavailable" in result.reason
    assert "nothing is known" in result.reason and "fail_open" in result.reason


async def test_a_block_policy_set_while_the_enforcer_is_down_binds_an_expired_snapshot(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    """The cached snapshot has expired (``cache_ttl=0``), so the fallback must read the
    policy log's end itself: the BLOCK policy set after the enforcer stopped is newer than
    the WARN-only snapshot, for the call checked before and for one never checked."""
    settings = stack_settings(nats_url, db, topology, tmp_path, cache_ttl=0)
    async with enforcement_stack(nc, settings) as stack:
        await stack.set_policy(name="watch", limit_amount="100", action="warn")
        assert (await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME)).allowed
        assert stack.enforcer is not None
        await stack.enforcer.stop()
        await stack.set_policy(name="hard cap", limit_amount="0.01", action="block")
        seen = await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME)
        unseen = await stack.tracker.check_budget("gpt-4o", user_id="bob", estimated_cost=DIME)
    for result in (seen, unseen):
        assert not result.allowed and not result.enforced
        assert "enforcer unavailable" in result.reason and "nothing is known" in result.reason


def policy_log_unreadable(stack: EnforcementStack) -> None:
    """Every later read of the policy log's end times out (a real JetStream request that
    cannot be answered in time); the enforcer is untouched."""
    stack.tracker.checker.policy_log.timeout = 1e-9


async def test_an_unreadable_policy_log_asks_the_enforcer_instead(
    stack: EnforcementStack,
) -> None:
    """The cached WARN-only snapshot cannot be confirmed, so the enforcer is asked for a
    new one, which has the BLOCK policy set since: refused by the enforcer, truthfully."""
    await stack.set_policy(name="watch", limit_amount="100", action="warn")
    assert (await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME)).allowed
    policy_log_unreadable(stack)
    await stack.set_policy(name="hard cap", limit_amount="0.01", action="block")
    result = await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME)
    assert not result.allowed and result.enforced
    assert "'hard cap'" in result.reason and "unavailable" not in result.reason


async def test_an_unreadable_policy_log_and_no_enforcer_are_both_named(
    stack: EnforcementStack,
) -> None:
    await stack.set_policy(name="watch", limit_amount="100", action="warn")
    assert (await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME)).allowed
    policy_log_unreadable(stack)
    assert stack.enforcer is not None
    await stack.enforcer.stop()
    result = await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME)
    assert result.allowed and not result.enforced
    assert result.reason.startswith("policy log unreadable (")
    assert "and enforcer unavailable (" in result.reason
    assert "no BLOCK or THROTTLE policy" in result.reason


async def test_a_stray_message_under_the_policy_subjects_does_not_disable_the_cache(
    stack: EnforcementStack,
) -> None:
    """``<prefix>.events.policy.bogus`` is no policy event (the policies projection never
    applies it), so the cached WARN-only snapshot still covers the log's end and answers,
    with the enforcer gone."""
    await stack.set_policy(name="watch", limit_amount="100", action="warn")
    assert (await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME)).allowed
    subject = stack.settings.topology.event_subject("policy.bogus")
    await stack.nc.jetstream().publish(subject, b"{}")
    await asyncio.sleep(POLICY_NEWS_WITHIN)  # as set_policy waits: the next read sees it
    assert stack.enforcer is not None
    await stack.enforcer.stop()
    result = await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME)
    assert result.allowed and "unavailable" not in result.reason


async def test_a_cached_block_snapshot_goes_to_the_enforcer_without_a_new_snapshot(
    stack: EnforcementStack,
) -> None:
    """The enforcer decides BLOCK calls under its current policies, so such a snapshot
    needs no policy log read to be used: with the log unreadable, no new snapshot is
    asked for (an observer on the enforcer's subjects counts the requests)."""
    observer = await stack.nc.subscribe(stack.settings.topology.rpc_wildcard("enforcer.*"))
    await stack.set_policy(name="hard cap", limit_amount="100", action="block")
    first = await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME, reserve=False)
    assert first.allowed and first.enforced
    policy_log_unreadable(stack)
    for _ in range(3):
        result = await stack.tracker.check_budget("gpt-4o", estimated_cost=DIME, reserve=False)
        assert result.allowed and result.enforced
    await stack.nc.flush()  # the requests were answered, so the observer has them all now
    pending = range(observer.pending_msgs)
    asked = [(await observer.next_msg()).subject.rsplit(".", 1)[-1] for _ in pending]
    assert asked.count("check") == 4 and asked.count("snapshot") == 1


async def test_closing_stops_the_policy_log_read_in_flight(nc: Client, topology: Topology) -> None:
    policy_log = PolicyLog(topology, timeout=5)
    policy_log.use(nc)
    waiter = asyncio.create_task(policy_log.end())
    await asyncio.sleep(0)  # the waiter has sent its read and waits for it
    policy_log.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_a_cached_snapshot_is_stale_once_a_custom_policy_begins(
    stack: EnforcementStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A campaign's BLOCK limit that begins at the next quarter hour is in no window of a
    snapshot taken before it: the snapshot answers no call from then on (not until its
    time to live runs out)."""
    now = utc_now()
    begins = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
    begins += timedelta(minutes=15)
    await stack.set_policy(policy_id="watch", limit_amount="1000", action="warn")
    await stack.set_policy(
        policy_id="campaign",
        limit_amount="0.01",
        action="block",
        period="custom",
        custom_start=begins,
        custom_end=begins + timedelta(days=1),
    )
    for _ in range(2):  # the snapshot, then the policy log's end read: the cache answers
        first = await stack.tracker.check_budget("gpt-4o", user_id="u1", estimated_cost=Decimal(1))
        assert first.allowed and [p.policy_id for p in first.policies] == ["watch"]
    assert stack.tracker.admits_if_cached("gpt-4o", user_id="u1", estimated_cost=Decimal(1))
    monkeypatch.setattr(budget.checks, "utc_now", lambda: begins + timedelta(seconds=1))
    assert not stack.tracker.admits_if_cached("gpt-4o", user_id="u1", estimated_cost=Decimal(1))


async def test_a_check_the_enforcer_refuses_to_judge_is_refused_even_with_fail_open(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    """The enforcer is up and answers that it cannot judge this call (here a user id with a
    NUL character, which PostgreSQL refuses, asked below ``check_budget``, which refuses
    it first): the call is refused, saying so, not taken for an enforcer that is down,
    which ``fail_open`` would allow past a spent BLOCK limit."""
    settings = stack_settings(nats_url, db, topology, tmp_path, fail_open=True)
    async with enforcement_stack(nc, settings) as stack:
        await stack.set_policy(scope="user", limit_amount="0", action="block")
        await stack.enforcer_applies_policies()
        honest = await stack.tracker.check_budget("gpt-4o", user_id="alice", estimated_cost=DIME)
        hostile = await stack.tracker.checker.check(
            CallAttributes(model="gpt-4o", provider="openai", user_id="a\x00b"),
            estimated_cost=DIME,
        )
    assert not honest.allowed and honest.enforced
    assert not hostile.allowed and not hostile.enforced, hostile.reason
    assert "the enforcer refused to check this call" in hostile.reason
    assert "unsupported Unicode escape sequence" in hostile.reason
    assert "unavailable" not in hostile.reason and "start `budget enforcer`" not in hostile.reason
