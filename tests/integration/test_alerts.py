"""Alerts on real NATS and PostgreSQL, sent to a real webhook and SMTP server: thresholds
raise once each, whatever is redelivered; cooldowns; a rebuild sends nothing again, and
sends what the live worker never saw; a failing channel delays no other; subscribers see
alerts in order."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from nats.aio.client import Client

from budget.alerts import AlertEngine
from budget.config import Settings
from budget.periods import Period
from budget.tracker import start_usage_tracker
from budget.webhooks import SIGNATURE_HEADER, verify_signature
from events import (
    Alert,
    AlertRule,
    AlertRuleSet,
    AlertType,
    BudgetPolicy,
    Event,
    LimitAction,
    PolicySet,
    RequestBlocked,
    Topology,
    utc_now,
)
from events.rpc import PolicySpend
from projections.alerts import AlertsProjection
from projections.db import connect
from projections.engine.rebuild import rebuild
from projections.registry import get_projection
from services.database_roles import NOTIFIER_ROLE

from alerting import (
    WEBHOOK_SECRET,
    Mailbox,
    Webhook,
    alert_settings,
    evaluated_to_the_end,
    evaluator,
    outbox,
)
from ledger_logs import correction
from support import catch_up, publish, query_service, rows, start_of, usage_event, wait_for

pytestmark = pytest.mark.integration
START = start_of(Period.WEEKLY, ago=2) + timedelta(hours=9)  # a Monday, 13+ days ago
CHANNELS = {"nats", "log", "ui", "webhook", "email"}


@dataclass
class Receivers:
    settings: Settings
    hook: Webhook
    box: Mailbox
    notifier_url: str | None
    """The notifier's own role on the test's schema, as under ``budget up`` (when the
    server has it)."""

    def evaluator(self, nc: Client) -> contextlib.AbstractAsyncContextManager[None]:
        """The alerts worker and a notifier on its own role, until the block ends."""
        return evaluator(nc, self.settings, notifier_url=self.notifier_url)


@pytest.fixture
def receivers(
    nats_url: str,
    db: str,
    door_schema_urls: dict[str, str],
    topology: Topology,
    tmp_path: Path,
    hook: Webhook,
    box: Mailbox,
) -> Receivers:
    settings = alert_settings(nats_url, db, topology, tmp_path, hook, box)
    return Receivers(settings, hook, box, door_schema_urls.get(NOTIFIER_ROLE))


def crossing_events(policy_id: str = "team") -> list[Event]:
    """A $1.00 monthly policy (soft limit 80 %) and usage taking it to 0.80, 0.95, 1.00
    and beyond: three thresholds, each crossed by exactly one event."""
    policy = BudgetPolicy(policy_id=policy_id, name="Team", limit_amount=Decimal("1.00"))
    costs = ["0.50", "0.30", "0.15", "0.05", "0.10"]
    return [
        PolicySet(occurred_at=START, policy=policy),
        *(usage_event(cost=c, at=START + timedelta(minutes=i)) for i, c in enumerate(costs)),
    ]


def daily_policy_with_a_half_rule_cooling_down(day: datetime) -> list[Event]:
    """A daily $1 policy and a 50 % rule on it, shown in the UI, cooling down for 2 hours;
    both set at ``day``."""
    policy = BudgetPolicy(policy_id="daily", name="Daily", limit_amount=1, period="daily")
    rule = AlertRule(
        rule_id="half",
        name="Half",
        threshold_percent=50,
        cooldown_minutes=120,
        policy_ids=("daily",),
        channels=("ui",),
    )
    return [PolicySet(occurred_at=day, policy=policy), AlertRuleSet(occurred_at=day, rule=rule)]


async def alert_rows(db: str) -> list[Alert]:
    found = await rows(db, "SELECT alert FROM alerts ORDER BY raised_at, stream_seq")
    return [Alert.model_validate(row[0]) for row in found]


async def all_delivered(db: str, expected: int) -> None:
    async def delivered() -> bool:
        """every queued delivery was sent"""
        queued = await outbox(db)
        return len(queued) == expected and all(r[2] == "sent" for r in queued)

    await wait_for(delivered, within=20)


@pytest.fixture
async def alert_subscriber(nc: Client, topology: Topology) -> AsyncIterator[list[Any]]:
    received: list[Any] = []

    async def collect(msg: Any) -> None:
        received.append((msg.subject, json.loads(msg.data), msg.headers))

    sub = await nc.subscribe(f"{topology.prefix}.alerts.>", cb=collect)
    yield received
    await sub.unsubscribe()


async def test_crossing_80_95_100_raises_three_alerts_sent_once_per_channel(
    nc: Client, db: str, topology: Topology, receivers: Receivers, alert_subscriber: list[Any]
) -> None:
    began = utc_now()
    events = crossing_events()
    await publish(nc, topology, events)
    await publish(nc, topology, events[1:], msg_id=False)  # every usage event twice
    async with receivers.evaluator(nc):
        await all_delivered(db, 3 * len(CHANNELS))

    alerts = await alert_rows(db)
    assert [(a.alert_type, a.threshold_percent, a.spend) for a in alerts] == [
        (AlertType.THRESHOLD_WARNING, Decimal(80), Decimal("0.80")),
        (AlertType.THRESHOLD_CRITICAL, Decimal(95), Decimal("0.95")),
        (AlertType.LIMIT_EXCEEDED, Decimal(100), Decimal("1.00")),
    ]
    assert [a.raised_at for a in alerts] == [START + timedelta(minutes=m) for m in (1, 2, 3)]
    ids = [str(a.alert_id) for a in alerts]
    # NATS: in order, on <prefix>.alerts.<severity>.<type>, with the id as Nats-Msg-Id
    assert [(s, body["alert_id"], h["Nats-Msg-Id"]) for s, body, h in alert_subscriber] == [
        (f"{topology.prefix}.alerts.warning.threshold_warning", ids[0], ids[0]),
        (f"{topology.prefix}.alerts.critical.threshold_critical", ids[1], ids[1]),
        (f"{topology.prefix}.alerts.critical.limit_exceeded", ids[2], ids[2]),
    ]
    # webhook: once each, signed (time, key and body), with the id as idempotency key
    assert [headers["Idempotency-Key"] for headers, _ in receivers.hook.received] == ids
    for headers, body in receivers.hook.received:
        key = headers["Idempotency-Key"]
        assert verify_signature(WEBHOOK_SECRET, headers[SIGNATURE_HEADER], key, body)
    # email: once each, dated (RFC 5322 requires it; mail clients sort and filters score
    # by it) with when it was sent, in UTC
    assert [m["Message-ID"] for m in receivers.box.messages] == [
        f"<{i}@budget-manager>" for i in ids
    ]
    for message in receivers.box.messages:
        assert len(message.get_all("Date", [])) == 1, message
        dated = email.utils.parsedate_to_datetime(message["Date"])
        assert dated.utcoffset() == timedelta(0) and dated >= began.replace(microsecond=0)
    # UI feed: once each
    assert sorted(str(r[0]) for r in await rows(db, "SELECT alert_id FROM alert_feed")) == sorted(
        ids
    )


async def test_an_alert_names_its_period_in_the_policys_own_time_zone(
    nc: Client, db: str, topology: Topology, receivers: Receivers
) -> None:
    """A New York team's daily budget starts at midnight in New York: its alerts say the
    day from that midnight, there (they said '05:00 UTC', a start the team never set)."""
    new_york = ZoneInfo("America/New_York")
    policies = [
        BudgetPolicy(
            policy_id="ny",
            name="NY",
            limit_amount=Decimal("0.01"),
            period="daily",
            timezone="America/New_York",
        ),
        BudgetPolicy(policy_id="utc", name="UTC", limit_amount=Decimal("0.01"), period="weekly"),
    ]
    events: list[Event] = [PolicySet(occurred_at=START, policy=p) for p in policies]
    await publish(nc, topology, [*events, usage_event(cost="0.02", at=START)])
    async with receivers.evaluator(nc):
        await evaluated_to_the_end(nc, db, topology)
    said = {(a.policy_id, a.message.partition(" USD ")[2]) for a in await alert_rows(db)}
    assert said == {
        ("ny", f"for the day from {START.astimezone(new_york):%Y-%m-%d} 00:00 America/New_York"),
        ("utc", f"for the week from {start_of(Period.WEEKLY, ago=2):%Y-%m-%d} 00:00 UTC"),
    }


async def test_redelivery_after_a_commit_raises_and_sends_nothing_new(
    nc: Client, db: str, topology: Topology, receivers: Receivers
) -> None:
    """As if the worker died between commit and ack: the consumer is recreated and the
    whole log is delivered again."""
    await publish(nc, topology, crossing_events())
    async with receivers.evaluator(nc):
        await all_delivered(db, 3 * len(CHANNELS))
    await nc.jetstream().delete_consumer(topology.event_stream.name, "alerts-v1")
    async with receivers.evaluator(nc):
        await evaluated_to_the_end(nc, db, topology)  # the whole log re-applied
        await all_delivered(db, 3 * len(CHANNELS))  # and nothing more queued
    assert len(await alert_rows(db)) == 3
    assert len(receivers.hook.received) == 3 and len(receivers.box.messages) == 3


async def test_rebuild_reproduces_the_alerts_and_sends_nothing(
    nc: Client, db: str, topology: Topology, receivers: Receivers
) -> None:
    await publish(nc, topology, crossing_events())
    async with receivers.evaluator(nc):
        await all_delivered(db, 3 * len(CHANNELS))
        before = await rows(db, "SELECT * FROM alerts ORDER BY alert_id")
        sent = await outbox(db)
        await rebuild(get_projection("alerts"), nc=nc, database_url=db, topology=topology)
        # live once rebuild returns: nothing queued means nothing the notifier could send
        assert await rows(db, "SELECT * FROM alerts ORDER BY alert_id") == before
        assert await outbox(db) == sent
    assert len(receivers.hook.received) == 3


@contextlib.asynccontextmanager
async def swap_held(db: str) -> AsyncIterator[None]:
    """Hold the alerts registry row until the block ends, and enter it once a rebuild is
    waiting for it: what the block publishes arrives between catch-up and the swap."""
    conn = await connect(db)
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM projection_registry WHERE name = 'alerts' FOR SHARE")

            async def swap_waiting() -> bool:
                """the rebuild caught up and waits to swap"""
                waiting = await rows(
                    db,
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%%FROM projection_registry WHERE name = %%FOR UPDATE'",
                )
                return bool(waiting)

            await wait_for(swap_waiting, within=20)
            yield
    finally:
        await conn.close()


async def test_a_rebuild_sends_the_alerts_of_events_the_live_worker_never_saw(
    nc: Client, db: str, topology: Topology, receivers: Receivers
) -> None:
    """The live worker sends the 80 % alert, then is down: the 95 % crossing arrives before
    the rebuild and the 100 % one while it swaps. Each alert goes out once per channel."""
    policy, *usage = crossing_events()
    await publish(nc, topology, [policy, *usage[:2]])
    async with receivers.evaluator(nc):
        await all_delivered(db, len(CHANNELS))
    await publish(nc, topology, usage[2:3])
    rebuilding = asyncio.create_task(
        rebuild(get_projection("alerts"), nc=nc, database_url=db, topology=topology)
    )
    async with swap_held(db):
        await publish(nc, topology, usage[3:])
    assert await asyncio.wait_for(rebuilding, 60) == 2  # (a swap that never ends fails)
    async with receivers.evaluator(nc):
        await all_delivered(db, 3 * len(CHANNELS))
    alerts = await alert_rows(db)
    assert [a.threshold_percent for a in alerts] == [Decimal(80), Decimal(95), Decimal(100)]
    ids = [str(a.alert_id) for a in alerts]
    assert [headers["Idempotency-Key"] for headers, _ in receivers.hook.received] == ids
    assert [m["Message-ID"] for m in receivers.box.messages] == [
        f"<{i}@budget-manager>" for i in ids
    ]


async def test_cooldown_suppresses_a_second_crossing_inside_it_and_not_after(
    nc: Client, db: str, topology: Topology, receivers: Receivers
) -> None:
    """A daily $1 policy with a 50 % rule cooling down for 2 hours: crossed at 23:00, again
    at 00:30 the next day (suppressed), and at 10:00 the day after (raised)."""
    day = START.replace(hour=0)
    crossings = [day + timedelta(hours=23), day + timedelta(hours=24.5), day + timedelta(hours=58)]
    await publish(
        nc,
        topology,
        [
            *daily_policy_with_a_half_rule_cooling_down(day),
            *(usage_event(cost="0.60", at=at) for at in crossings),
        ],
    )
    async with receivers.evaluator(nc):

        async def raised_twice() -> bool:
            """the half rule raised its alerts"""
            return len([a for a in await alert_rows(db) if a.rule_id == "half"]) == 2

        await wait_for(raised_twice, within=15)
    assert [a.raised_at for a in await alert_rows(db) if a.rule_id == "half"] == [
        crossings[0],
        crossings[2],
    ]


async def test_late_crossings_of_earlier_days_are_held_back_only_within_a_cooldown(
    nc: Client, db: str, topology: Topology
) -> None:
    """A daily $1 policy, the default 80 % rule (no cooldown) and a 50 % rule cooling down
    for 2 hours, crossed on days 2 (09:00) and 4 (00:30); then, later in the log, a late
    call crosses day 1, a correction crosses day 0 and a late call crosses day 3 at 23:30.
    Alerts of earlier days follow later days' alerts: no cooldown holds one back, a 2-hour
    one only the 50 % alert of day 3, an hour before day 4's. A rebuild raises the same."""
    day = START.replace(hour=0)
    first = usage_event(cost="0.10", at=day + timedelta(hours=9))
    await publish(
        nc,
        topology,
        [
            *daily_policy_with_a_half_rule_cooling_down(day),
            first,
            usage_event(cost="0.85", at=day + timedelta(days=2, hours=9)),
            usage_event(cost="0.85", at=day + timedelta(days=4, minutes=30)),
            usage_event(cost="0.85", at=day + timedelta(days=1, hours=9)),
            correction(first, Decimal("0.85")),
            usage_event(cost="0.85", at=day + timedelta(days=3, hours=23, minutes=30)),
        ],
    )

    await catch_up(AlertsProjection(), nc, db, topology)

    raised = [(a.rule_id, a.period_start) for a in await alert_rows(db)]
    assert sorted(raised) == [
        *(("default-soft-limit", day + timedelta(days=d)) for d in (0, 1, 2, 3, 4)),
        *(("half", day + timedelta(days=d)) for d in (0, 1, 2, 4)),
    ]
    live = await rows(db, "SELECT * FROM alerts ORDER BY alert_id")
    await rebuild(get_projection("alerts"), nc=nc, database_url=db, topology=topology)
    assert await rows(db, "SELECT * FROM alerts ORDER BY alert_id") == live


async def test_repeated_refusals_raise_one_violation_per_cooldown(
    nc: Client, db: str, topology: Topology, receivers: Receivers
) -> None:
    # cooldown 15 min
    await publish(nc, topology, [refusal("alice", m) for m in (0, 5, 16)])
    async with receivers.evaluator(nc):

        async def raised() -> bool:
            """two violations"""
            return len(await alert_rows(db)) == 2

        await wait_for(raised, within=15)
    alerts = await alert_rows(db)
    assert {a.alert_type for a in alerts} == {AlertType.POLICY_VIOLATION}
    assert [a.raised_at for a in alerts] == [START, START + timedelta(minutes=16)]


def refusal(user: str, minutes: float, policy_id: str = "cap") -> RequestBlocked:
    return RequestBlocked(
        occurred_at=START + timedelta(minutes=minutes),
        action=LimitAction.BLOCK,
        policy_ids=[policy_id],
        reason=f"block by policy '{policy_id}'",
        model="gpt-4o",
        user_id=user,
        estimated_cost=Decimal("0.1"),
        spend=Decimal(5),
        limit_amount=Decimal(5),
    )


async def test_violations_are_keyed_by_the_policys_scope_key_with_a_cooldown_each(
    nc: Client, db: str, topology: Topology, receivers: Receivers
) -> None:
    """One per-user policy: alice's refusal never suppresses bob's (cooldown 15 min each);
    alice's second refusal inside her cooldown is suppressed, carol's after it is raised."""
    per_user = BudgetPolicy(
        policy_id="per-user", name="Per user", scope="user", limit_amount=Decimal(5)
    )
    await publish(
        nc,
        topology,
        [
            PolicySet(occurred_at=START, policy=per_user),
            refusal("alice", 0, "per-user"),
            refusal("bob", 1, "per-user"),
            refusal("alice", 2, "per-user"),
            refusal("carol", 3, "per-user"),
        ],
    )
    async with receivers.evaluator(nc):

        async def carol_raised() -> bool:
            """carol's violation (the last event) was raised"""
            return any(a.scope_key == "carol" for a in await alert_rows(db))

        await wait_for(carol_raised, within=15)
    alerts = await alert_rows(db)
    assert [(a.policy_id, a.scope, a.scope_key, a.raised_at) for a in alerts] == [
        ("per-user", "user", user, START + timedelta(minutes=m))
        for user, m in (("alice", 0), ("bob", 1), ("carol", 3))
    ]


async def test_a_webhook_answering_500_delays_no_other_channel(
    nc: Client, db: str, topology: Topology, receivers: Receivers, alert_subscriber: list[Any]
) -> None:
    receivers.hook.status = 500
    await publish(nc, topology, crossing_events())
    async with receivers.evaluator(nc):

        async def others_delivered() -> bool:
            """NATS, email, UI and log delivered all three"""
            queued = await outbox(db)
            others = [r for r in queued if r[1] != "webhook"]
            return len(others) == 12 and all(r[2] == "sent" for r in others)

        await wait_for(others_delivered, within=10)
        assert len(alert_subscriber) == 3 and len(receivers.box.messages) == 3
        webhook = [r for r in await outbox(db) if r[1] == "webhook"]
        assert [r[2] for r in webhook] == ["pending"] * 3 and webhook[0][3] >= 1
    assert receivers.hook.received == []


async def test_a_webhook_down_for_a_minute_gets_every_alert_once_when_back(
    nc: Client, db: str, topology: Topology, receivers: Receivers
) -> None:
    receivers.hook.status = 503
    await publish(nc, topology, crossing_events())
    async with receivers.evaluator(nc):
        started = time.monotonic()

        async def failing() -> bool:
            """the webhook has been refusing"""
            return any(r[1] == "webhook" and r[3] >= 1 for r in await outbox(db))

        await wait_for(failing, within=10)
        await asyncio.sleep(60 - (time.monotonic() - started))
        receivers.hook.status = 200
        await all_delivered(db, 3 * len(CHANNELS))
    keys = [headers["Idempotency-Key"] for headers, _ in receivers.hook.received]
    assert len(keys) == 3 and len(set(keys)) == 3


async def test_a_spike_hour_raises_an_anomaly_per_watched_scope_within_that_hour(
    nc: Client, db: str, topology: Topology, receivers: Receivers
) -> None:
    steady = [usage_event(cost="1.00", at=START + timedelta(hours=h)) for h in range(24 * 8)]
    spike_hour = START + timedelta(days=8, hours=14)
    spike = [usage_event(cost="1.00", at=spike_hour + timedelta(minutes=5 * i)) for i in range(6)]
    await publish(nc, topology, [*steady, *spike])
    async with receivers.evaluator(nc):

        async def flagged() -> bool:
            """the spike hour was flagged"""
            return len(await alert_rows(db)) >= 4

        await wait_for(flagged, within=20)
        await evaluated_to_the_end(nc, db, topology)  # so no more can come
    alerts = await alert_rows(db)
    assert {(a.alert_type, a.scope, a.scope_key) for a in alerts} == {
        (AlertType.ANOMALY, "global", "*"),
        (AlertType.ANOMALY, "provider", "openai"),
        (AlertType.ANOMALY, "model", "gpt-4o"),
        (AlertType.ANOMALY, "project", "apollo"),
    }
    # 1.00 an hour is usual: the third call of the hour makes it 3x
    assert {a.raised_at for a in alerts} == {spike_hour + timedelta(minutes=10)}
    assert {a.baseline for a in alerts} == {Decimal("1.00")}


async def test_alert_engine_rules_acknowledgements_and_resolutions(
    nc: Client, db: str, topology: Topology, receivers: Receivers
) -> None:
    await publish(nc, topology, crossing_events())
    tracker = await start_usage_tracker(receivers.settings)
    engine = AlertEngine(receivers.settings, tracker)
    try:
        async with receivers.evaluator(nc), query_service(nc, receivers.settings):
            await all_delivered(db, 3 * len(CHANNELS))
            rule = AlertRule(rule_id="quarter", name="A quarter", threshold_percent=25)
            await engine.add_rule(rule)
            assert rule in await engine.get_rules()
            assert await engine.remove_rule("default-anomaly")
            assert "default-anomaly" not in {r.rule_id for r in await engine.get_rules()}

            active = await engine.get_active_alerts(policy_id="team")
            assert len(active) == 3
            assert await engine.list_alerts(limit=2) == active[1:]  # the newest
            first, second = active[0].alert.alert_id, active[1].alert.alert_id
            await engine.acknowledge_alert(first, acknowledged_by="ops")
            await engine.resolve_alert(second, resolved_by="ops")
            unacknowledged = await engine.get_active_alerts(unacknowledged_only=True)
            assert [a.alert.alert_id for a in unacknowledged] == [active[2].alert.alert_id]
            assert [a.alert.alert_id for a in await engine.get_active_alerts()] == [
                first,
                active[2].alert.alert_id,
            ]
            assert {d.status for d in await engine.deliveries(first)} == {"sent"}
    finally:
        await tracker.close()


async def test_evaluate_thresholds_names_the_alerts_the_rules_would_raise(
    receivers: Receivers, db: str, nc: Client
) -> None:
    """$9.60 of $10: 80 and 95 %. A $0 limit: nothing while nothing is spent, every
    threshold once anything is."""

    def spent(limit: int, key: str, amount: str) -> PolicySpend:
        policy = BudgetPolicy(policy_id=f"p{limit}", name="P", limit_amount=Decimal(limit))
        return PolicySpend(
            policy=policy,
            key=key,
            window_start=START,
            window_end=START + timedelta(days=31),
            spent=Decimal(amount),
        )

    summary = [spent(10, "*", "9.60"), spent(0, "idle", "0"), spent(0, "busy", "0.01")]
    tracker = await start_usage_tracker(receivers.settings)
    try:
        async with receivers.evaluator(nc), query_service(nc, receivers.settings):
            alerts = await AlertEngine(receivers.settings, tracker).evaluate_thresholds(summary)
    finally:
        await tracker.close()
    assert [(a.policy_id, a.scope_key, a.alert_type, a.threshold_percent) for a in alerts] == [
        ("p10", "*", AlertType.THRESHOLD_CRITICAL, Decimal(95)),
        ("p10", "*", AlertType.THRESHOLD_WARNING, Decimal(80)),
        ("p0", "busy", AlertType.THRESHOLD_CRITICAL, Decimal(95)),
        ("p0", "busy", AlertType.LIMIT_EXCEEDED, Decimal(100)),
        ("p0", "busy", AlertType.THRESHOLD_WARNING, Decimal(80)),
    ]
