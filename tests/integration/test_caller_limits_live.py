"""Per-caller limits on the real NATS and PostgreSQL: a greedy host flooding the enforcer
and the query service is refused with ``retry_after`` while a well-behaved host gets
every check answered correctly; a caller that asks again before its retry time waits for
its refusal; a tracker waits out a short refusal, turns a long one into a clear refusal
(never into fail_open) and does not ask again before its time; holds belong to the caller
that made them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from prometheus_client import start_http_server
from pydantic import ValidationError

from budget.config import Settings
from budget.manager import BudgetManager
from budget.rpc import Refused, ask
from budget.tracker import UsageTracker, start_usage_tracker
from events import BudgetScope, Topology
from events.queries import QUERY_POLICIES, PoliciesQuery
from events.rpc import RPC_CHECK, CheckRequest, CheckResult, RpcError

from enforcement import EnforcementStack, enforcement_stack, stack_settings
from live import free_port
from support import figure, scrape

pytestmark = pytest.mark.integration
DIME = Decimal("0.10")
SERVICES = "budget-services"  # the services' own caller: exempt, and may release any hold


@contextlib.asynccontextmanager
async def limited_stack(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path, **limits: Any
) -> AsyncIterator[EnforcementStack]:
    """The enforcement stack with these limits and a $1.00 BLOCK policy per user, which the
    enforcer applies."""
    settings = stack_settings(nats_url, db, topology, tmp_path, service_name=SERVICES, **limits)
    async with enforcement_stack(nc, settings) as stack:
        await stack.set_policy(scope=BudgetScope.USER, limit_amount="1.00", action="block")
        await stack.enforcer_applies_policies()
        yield stack


@contextlib.asynccontextmanager
async def host(stack: EnforcementStack, name: str, **extra: Any) -> AsyncIterator[UsageTracker]:
    """A tracker of another host app: its requests name ``name`` as their caller."""
    settings = stack.settings.model_copy(
        update={"service_name": name, "spool_dir": stack.settings.spool_dir / name, **extra}
    )
    tracker = await start_usage_tracker(Settings.model_validate(settings.model_dump()))
    try:
        yield tracker
    finally:
        await tracker.close()


async def flood(nc: Client, subject: str, payload: bytes, until: asyncio.Event) -> list[bytes]:
    """Ask ``subject`` from 20 tasks at once, never waiting for ``retry_after``, until
    ``until`` is set (at most 20,000 requests); the answers."""
    answers: list[bytes] = []

    async def one_asker() -> None:
        while not until.is_set() and len(answers) < 20_000:
            answers.append((await nc.request(subject, payload, timeout=10)).data)

    await asyncio.gather(*(one_asker() for _ in range(20)))
    return answers


def refusals(answers: list[bytes]) -> list[RpcError]:
    refused = []
    for data in answers:
        with contextlib.suppress(ValidationError):
            refused.append(RpcError.model_validate_json(data))
    return refused


async def test_a_greedy_host_is_refused_while_a_polite_one_is_answered(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    async with limited_stack(
        nc, nats_url, db, topology, tmp_path, caller_rate=50, caller_burst=10, caller_in_flight=4
    ) as stack:
        greedy_check = CheckRequest(model="gpt-4o", user_id="greedy", estimated_cost=Decimal(0))
        done = asyncio.Event()
        floods = [
            asyncio.create_task(
                flood(nc, topology.rpc_subject(name, caller="greedy"), payload, done)
            )
            for name, payload in (
                (RPC_CHECK, greedy_check.model_dump_json().encode()),
                (QUERY_POLICIES, PoliciesQuery().model_dump_json().encode()),
            )
        ]
        async with host(stack, "polite") as polite:
            results = []
            for _ in range(15):  # 10 fit under $1.00, then the budget refuses
                results.append(
                    await polite.check_budget("gpt-4o", user_id="polite", estimated_cost=DIME)
                )
            policies = await BudgetManager(polite.settings, polite).get_policies()
        done.set()
        check_answers, query_answers = await asyncio.gather(*floods)
    assert [r.allowed for r in results] == [True] * 10 + [False] * 5
    assert all(r.enforced for r in results), [r.reason for r in results if not r.enforced]
    assert results[-1].current_spend == Decimal("1.00")
    assert [p.name for p in policies] == ["test policy"]
    for answers in (check_answers, query_answers):
        refused = refusals(answers)
        assert refused, "the greedy host was never refused"
        assert all(r.retry_after is not None and r.retry_after > 0 for r in refused)
        assert all("too many requests" in r.error for r in refused)
        assert len(refused) < len(answers), "the greedy host got nothing answered"


async def test_checks_refused_unread_are_counted_by_outcome_on_the_metrics_endpoint(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    """A check refused for its caller's limits and one that is no check request are
    answered without a decision: each still counts, under its own outcome."""
    server, thread = start_http_server(free_port(), addr="127.0.0.1")
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        async with limited_stack(
            nc, nats_url, db, topology, tmp_path, caller_rate=0.001, caller_burst=1
        ):
            before = scrape(url)
            subject = topology.rpc_subject(RPC_CHECK, caller="metered")
            dime = CheckRequest(model="gpt-4o", user_id="metered", estimated_cost=DIME)
            assert (await ask(nc, subject, dime, CheckResult, within=5)).allowed
            refused = RpcError.model_validate_json(
                (await nc.request(subject, dime.model_dump_json().encode(), timeout=5)).data
            )  # its one token is spent
            malformed = RpcError.model_validate_json(
                (await nc.request(topology.rpc_subject(RPC_CHECK, caller="other"), b"{}")).data
            )
            after = scrape(url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert "too many requests" in refused.error
    assert malformed.error.startswith("bad CheckRequest: model: ")
    moved = {
        outcome: figure(after, "budget_checks_total", outcome=outcome)
        - figure(before, "budget_checks_total", outcome=outcome)
        for outcome in ("allowed", "block", "throttle", "error", "rate_limited", "invalid")
    }
    assert moved == {
        "allowed": 1,
        "block": 0,
        "throttle": 0,
        "error": 0,
        "rate_limited": 1,
        "invalid": 1,
    }


async def test_a_tracker_waits_out_a_short_refusal(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    async with limited_stack(nc, nats_url, db, topology, tmp_path, caller_rate=10, caller_burst=1):
        subject = topology.rpc_subject(RPC_CHECK, caller="polite")
        dime = CheckRequest(model="gpt-4o", user_id="polite", estimated_cost=DIME)
        await ask(nc, subject, dime, CheckResult, within=5)
        raw = await nc.request(subject, dime.model_dump_json().encode(), timeout=5)
        refusal = RpcError.model_validate_json(raw.data)  # its one token is spent
        assert refusal.retry_after is not None and 0 < refusal.retry_after <= 0.1
        answers = [await ask(nc, subject, dime, CheckResult, within=5) for _ in range(3)]
    assert all(a.allowed and a.enforced for a in answers)
    assert answers[-1].current_spend == Decimal("0.30")


async def test_a_long_refusal_refuses_the_call_even_with_fail_open(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    async with (
        limited_stack(
            nc, nats_url, db, topology, tmp_path, caller_rate=0.01, caller_burst=2
        ) as stack,
        host(stack, "polite", fail_open=True, enforcer_timeout=0.5) as polite,
    ):
        first = await polite.check_budget("gpt-4o", user_id="polite", estimated_cost=DIME)
        second = await polite.check_budget("gpt-4o", user_id="polite", estimated_cost=DIME)
    assert first.allowed and first.enforced  # a snapshot and a check: the burst of 2
    assert not second.allowed and not second.enforced
    assert "enforcer throttles this caller" in second.reason
    assert "retry after" in second.reason
    assert "fail_open does not apply to being throttled" in second.reason


async def test_a_hold_is_released_only_by_its_caller_or_the_services(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    async with (
        limited_stack(nc, nats_url, db, topology, tmp_path) as stack,
        host(stack, "alice-app") as alice,
        host(stack, "mallory-app") as mallory,
    ):
        mine = await alice.check_budget("gpt-4o", user_id="alice", estimated_cost=DIME)
        other = await alice.check_budget("gpt-4o", user_id="alice", estimated_cost=DIME)
        assert mine.reservation_id and other.reservation_id
        with pytest.raises(Refused, match="made by another caller"):
            await mallory.checker.release_reporting(mine.reservation_id)
        assert len(await stack.holds()) == 2
        assert await alice.checker.release_reporting(mine.reservation_id) == 1
        assert await stack.tracker.checker.release_reporting(other.reservation_id) == 1
        assert await stack.holds() == []
        assert await mallory.checker.release_reporting(mine.reservation_id) == 0


async def test_a_caller_that_asks_again_at_once_waits_for_its_refusal_others_do_not(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    async with limited_stack(
        nc, nats_url, db, topology, tmp_path, caller_rate=0.01, caller_burst=1
    ):
        deaf = topology.rpc_subject(RPC_CHECK, caller="deaf")
        dime = CheckRequest(model="gpt-4o", user_id="deaf", estimated_cost=DIME)
        data = dime.model_dump_json().encode()
        assert (await ask(nc, deaf, dime, CheckResult, within=5)).allowed  # its one token
        told = RpcError.model_validate_json((await nc.request(deaf, data, timeout=5)).data)
        assert told.retry_after is not None and told.retry_after > 10  # answered at once
        asked_again = asyncio.create_task(nc.request(deaf, data, timeout=10))
        polite = topology.rpc_subject(RPC_CHECK, caller="polite")
        answer = await ask(
            nc, polite, dime.model_copy(update={"user_id": "polite"}), CheckResult, within=5
        )
        # asked after the deaf caller's second try, answered while that refusal is held
        assert answer.allowed and answer.enforced
        assert not asked_again.done()
        held = RpcError.model_validate_json((await asked_again).data)
    assert held.retry_after is not None and held.retry_after > 10
    assert "too many requests" in held.error


async def test_a_tracker_does_not_ask_again_before_its_retry_time(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    """Refused for 100 s: the tracker's next checks are refused without a request (the
    enforcer's count of refusals moves once), and fail_open still does not apply."""
    server, thread = start_http_server(free_port(), addr="127.0.0.1")
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        async with (
            limited_stack(
                nc, nats_url, db, topology, tmp_path, caller_rate=0.01, caller_burst=2
            ) as stack,
            host(stack, "polite", fail_open=True) as polite,
        ):
            first = await polite.check_budget("gpt-4o", user_id="polite", estimated_cost=DIME)
            before = figure(scrape(url), "budget_checks_total", outcome="rate_limited")
            later = [
                await polite.check_budget("gpt-4o", user_id="polite", estimated_cost=DIME)
                for _ in range(5)
            ]
            after = figure(scrape(url), "budget_checks_total", outcome="rate_limited")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert first.allowed and first.enforced  # a snapshot and a check: the burst of 2
    assert after - before == 1
    assert not any(r.allowed for r in later)
    assert all("enforcer throttles this caller" in r.reason for r in later)
    assert all("retry after" in r.reason for r in later)


async def test_many_checks_at_once_past_the_limits_are_refused_in_time_never_failed_open(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    """Twenty checks at once from a host whose burst is spent, each waiting 0.5 s: the
    enforcer holds the refusals of a caller that asks again before its time, though never
    past the time the asker says it waits, and the tracker takes a question unanswered
    soon after a refusal for a refusal: every check is refused as throttled, never allowed
    by ``fail_open`` as if the enforcer were down."""
    async with (
        limited_stack(
            nc, nats_url, db, topology, tmp_path, caller_rate=0.01, caller_burst=2
        ) as stack,
        host(stack, "busy", fail_open=True, enforcer_timeout=0.5) as busy,
    ):
        first = await busy.check_budget("gpt-4o", user_id="busy", estimated_cost=DIME)
        many = await asyncio.gather(
            *(busy.check_budget("gpt-4o", user_id="busy", estimated_cost=DIME) for _ in range(20))
        )
    assert first.allowed and first.enforced  # a snapshot and a check: the burst of 2
    assert not any(result.allowed for result in many)
    assert all("enforcer throttles this caller" in result.reason for result in many), [
        r.reason for r in many if "enforcer throttles this caller" not in r.reason
    ]


async def test_a_check_asked_for_another_caller_and_cancelled_releases_its_hold_as_that_caller(
    nc: Client,
    nats_url: str,
    db: str,
    topology: Topology,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A check asked for another caller (the HTTP API asks for each key, ``caller=``)
    whose asker goes while the answer is on its way (an HTTP client gone) releases the
    hold it made as that caller: as its own caller, the release was refused (the hold was
    another caller's) and the hold counted against the limit until it expired."""
    async with (
        limited_stack(nc, nats_url, db, topology, tmp_path) as stack,
        host(stack, "api-app") as api,
    ):
        checker = api.checker
        ask_enforcer = checker._ask
        reserved, answer_delivered = asyncio.Event(), asyncio.Event()

        async def answered_late(name: str, *args: Any, **kwargs: Any) -> Any:
            answer = await ask_enforcer(name, *args, **kwargs)
            if name == RPC_CHECK:
                reserved.set()
                await answer_delivered.wait()  # the answer still on its way when it goes
            return answer

        monkeypatch.setattr(checker, "_ask", answered_late)
        asking = api.check_budget(
            "gpt-4o", user_id="alice", estimated_cost=DIME, caller="api-key-k1"
        )
        await stack.cancel_while_answer_in_flight(
            asyncio.create_task(asking), reserved, answer_delivered
        )
