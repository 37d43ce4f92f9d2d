"""NOTIFY differs from WARN, on real NATS, PostgreSQL, a webhook and an SMTP server: a
NOTIFY policy whose spend reaches its limit notifies the administrators (an
``admin_notification`` alert on their channels); a WARN policy's crossing does not."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from budget.periods import Period
from events import AlertType, BudgetPolicy, BudgetScope, LimitAction, PolicySet, Topology

from alerting import Mailbox, Webhook, alert_settings, evaluator
from enforcement import EnforcementStack
from support import publish, start_of, usage_event, wait_for

pytestmark = pytest.mark.integration
START = start_of(Period.WEEKLY, ago=1) + timedelta(hours=9)


def user_policy(user: str, action: LimitAction) -> BudgetPolicy:
    return BudgetPolicy(
        policy_id=f"{action.value}-{user}",
        name=f"{action.value} {user}",
        scope=BudgetScope.USER,
        scope_key=user,
        limit_amount=Decimal("1.00"),
        action=action,
    )


def admin_mail(box: Mailbox) -> list[str]:
    """Subjects of the administrators' notification emails."""
    return [str(m["Subject"]) for m in box.messages if "admin_notification" in m["Subject"]]


async def test_notify_crossing_notifies_admins_and_warn_crossing_does_not(
    nc: Client,
    nats_url: str,
    db: str,
    topology: Topology,
    tmp_path: Path,
    hook: Webhook,
    box: Mailbox,
) -> None:
    """alice's WARN policy passes its limit first, then bob's NOTIFY policy: each channel
    delivers in raised order, so a notification about alice would arrive before bob's."""
    settings = alert_settings(nats_url, db, topology, tmp_path, hook, box)
    received: list[tuple[str, dict[str, Any]]] = []

    async def collect(msg: Any) -> None:
        received.append((msg.subject, json.loads(msg.data)))

    await nc.subscribe(f"{topology.prefix}.alerts.>", cb=collect)
    events = [
        PolicySet(occurred_at=START, policy=user_policy("alice", LimitAction.WARN)),
        PolicySet(occurred_at=START, policy=user_policy("bob", LimitAction.NOTIFY)),
        usage_event(cost="1.20", user="alice", at=START + timedelta(minutes=1)),
        usage_event(cost="1.20", user="bob", at=START + timedelta(minutes=2)),
    ]
    await publish(nc, topology, events)
    async with evaluator(nc, settings):

        async def bob_notified() -> bool:
            """NATS, the webhook and the mailbox got bob's admin notification"""
            hooked = [b for b in hook.bodies() if b["alert_type"] == "admin_notification"]
            on_nats = [b for _, b in received if b["alert_type"] == "admin_notification"]
            return bool(hooked) and bool(admin_mail(box)) and bool(on_nats)

        await wait_for(bob_notified, within=20)

    notified = [b for b in hook.bodies() if b["alert_type"] == AlertType.ADMIN_NOTIFICATION]
    assert [(b["policy_id"], b["scope_key"]) for b in notified] == [("notify-bob", "bob")]
    assert Decimal(notified[0]["spend"]) == Decimal("1.20")
    mailed = admin_mail(box)
    assert len(mailed) == 1 and "notify bob" in mailed[0]
    # alice's WARN policy raised its ordinary threshold alerts, never a notification
    hooked_alice = [b["alert_type"] for b in hook.bodies() if b["scope_key"] == "alice"]
    assert "limit_exceeded" in hooked_alice and "admin_notification" not in hooked_alice
    subjects = [s for s, body in received if body["alert_type"] == "admin_notification"]
    assert subjects == [f"{topology.prefix}.alerts.critical.admin_notification"]


async def test_a_warn_policy_past_its_limit_warns_the_caller_and_the_log_once(
    stack: EnforcementStack, caplog: pytest.LogCaptureFixture
) -> None:
    await stack.set_policy(name="watch", limit_amount="0.05", action="warn")
    with caplog.at_level(logging.WARNING, logger="budget.checks"):
        results = [
            await stack.tracker.check_budget("gpt-4o", estimated_cost=Decimal("0.10"))
            for _ in range(2)
        ]
    for result in results:
        assert result.allowed and result.action is LimitAction.WARN
        assert "past its limit" in result.reason
    logged = [r.getMessage() for r in caplog.records if "'watch'" in r.getMessage()]
    assert len(logged) == 1
    assert "WARN policy 'watch': this call takes it past its limit of 0.05 USD" in logged[0]


async def test_the_cached_answer_of_an_instrumented_call_warns_as_a_check_does(
    stack: EnforcementStack, caplog: pytest.LogCaptureFixture
) -> None:
    """``admits_if_cached`` (what an instrumented call asks first) builds no CheckResult,
    but logs a WARN policy's limit passed once, as ``check_budget`` does; under a BLOCK
    policy it never answers: the enforcer must decide and reserve."""
    tracker = stack.tracker
    await stack.set_policy(name="watch", limit_amount="0.05", action="warn")
    admitted = 0

    async def answered_from_the_caches() -> bool:
        """admits_if_cached answered (right after a check read the policy log's end)"""
        nonlocal admitted
        within = await tracker.check_budget("gpt-4o", estimated_cost=Decimal("0.01"))
        assert within.allowed and not within.enforced and within.action is None
        admitted += tracker.admits_if_cached("gpt-4o", estimated_cost=Decimal("0.10"))
        return admitted == 2

    with caplog.at_level(logging.WARNING, logger="budget.checks"):
        await wait_for(answered_from_the_caches, interval=0)
    logged = [r.getMessage() for r in caplog.records if "'watch'" in r.getMessage()]
    assert len(logged) == 1
    assert "WARN policy 'watch': this call takes it past its limit of 0.05 USD" in logged[0]

    await stack.set_policy(name="cap", limit_amount="1.00", action="block")
    await stack.enforcer_applies_policies()
    assert not tracker.admits_if_cached("gpt-4o", estimated_cost=Decimal("0.10"))
    held = await tracker.check_budget("gpt-4o", estimated_cost=Decimal("0.10"))
    assert held.enforced and held.reservation_id is not None
    assert not tracker.admits_if_cached("gpt-4o", estimated_cost=Decimal("0.10"))
