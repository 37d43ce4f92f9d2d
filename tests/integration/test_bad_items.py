"""One bad item stops neither the alert evaluator nor the notifier: an event a rule raises
on is dead-lettered and the next one raises its alert; an alert the mail server refuses is
retried on its own while the channel's next alert goes out."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client

from budget.config import Settings
from events import BudgetPolicy, BudgetScope, PolicySet, Topology, utc_now
from projections.engine.deadletter import recent_dead_letters
from services.notifier import NotifierConfig

from alerting import Mailbox, Webhook, alert_settings, evaluator, smtp_server, webhook_server
from support import publish, rows, usage_event, wait_for

pytestmark = pytest.mark.integration
LAST_HOUR = datetime(9999, 12, 31, 23, 30, tzinfo=UTC)
"""Its month ends past what a datetime can hold: a threshold rule raises on it."""


@pytest.fixture
def receivers(
    nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> Iterator[tuple[Settings, Webhook, Mailbox]]:
    with webhook_server() as hook, smtp_server() as box:
        yield alert_settings(nats_url, db, topology, tmp_path, hook, box), hook, box


def user_policy(user: str, name: str) -> PolicySet:
    policy = BudgetPolicy(
        policy_id=f"cap-{user}",
        name=name,
        scope=BudgetScope.USER,
        scope_key=user,
        limit_amount=Decimal("1.00"),
    )
    return PolicySet(occurred_at=utc_now() - timedelta(minutes=5), policy=policy)


async def threshold_alerts(db: str) -> list[str]:
    """The policy of every alert raised."""
    return [str(r[0]) for r in await rows(db, "SELECT policy_id FROM alerts ORDER BY stream_seq")]


async def test_an_event_a_rule_raises_on_is_dead_lettered_and_the_next_alerts(
    nc: Client, db: str, topology: Topology, receivers: tuple[Settings, Webhook, Mailbox]
) -> None:
    settings, _, _ = receivers
    # The contract's time bounds would dead-letter an event dated 9999 before the rules see
    # it; an operator may widen them, and then the projection itself must not stop on it.
    settings = settings.model_copy(update={"max_clock_skew": float(10**12)})
    now = utc_now()
    await publish(
        nc,
        topology,
        [
            user_policy("alice", "alice's cap"),
            usage_event(cost="0.90", user="alice", at=LAST_HOUR),
            usage_event(cost="0.90", user="alice", at=now - timedelta(minutes=1)),
        ],
    )
    async with evaluator(nc, settings):

        async def alerted() -> bool:
            """the event after the bad one raised its alert"""
            return await threshold_alerts(db) == ["cap-alice"]

        await wait_for(alerted, within=30)
    letters = await recent_dead_letters(nc.jetstream(), topology, limit=10)
    assert [(d.consumer, d.original_seq) for d in letters] == [("alerts-v1", 2)]
    assert "OverflowError" in letters[0].reason


async def test_an_alert_the_mail_server_refuses_holds_back_nothing(
    nc: Client, db: str, topology: Topology, receivers: tuple[Settings, Webhook, Mailbox]
) -> None:
    settings, hook, box = receivers
    refusing = {"alice's"}  # a content filter refusing her message, until it is fixed
    box.refuse = lambda message: any(word in str(message["Subject"]) for word in refusing)
    at = utc_now() - timedelta(minutes=2)
    await publish(
        nc,
        topology,
        [
            user_policy("alice", "alice's\r\nBcc: eve@example.com"),  # a header, if it could
            user_policy("bob", "plain"),
            usage_event(cost="0.90", user="alice", at=at),
            usage_event(cost="0.90", user="bob", at=at + timedelta(seconds=1)),
        ],
    )
    async with evaluator(nc, settings, notifier=NotifierConfig(max_backoff=0.5)):

        async def bob_mailed() -> bool:
            """bob's alert was mailed while alice's, refused, is retried on its own"""
            alice = await rows(
                db,
                "SELECT o.status, o.attempts FROM alert_outbox o JOIN alerts a USING (alert_id)"
                " WHERE o.channel = 'email' AND a.policy_id = 'cap-alice'",
            )
            return len(box.messages) == 1 and alice[0][0] == "pending" and alice[0][1] >= 2

        await wait_for(bob_mailed, within=30)
        refusing.clear()

        async def alice_mailed() -> bool:
            """alice's alert went out once the server took it"""
            return len(box.messages) == 2

        await wait_for(alice_mailed, within=30)
    bob, alice = box.messages
    assert "plain" in str(bob["Subject"])
    # Her policy's name reached the subject as one line, and no header of its own.
    assert "alice's Bcc: eve@example.com:" in " ".join(str(alice["Subject"]).split())
    assert alice["Bcc"] is None
    assert [b["policy_id"] for b in hook.bodies()] == ["cap-alice", "cap-bob"]
