"""The seed's (docs/seed) usage examples, run as written against the real servers: the
``budget.alerts`` module and ``evaluate_thresholds(await manager.get_spend_summary())``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client

from budget.alerts import AlertEngine
from budget.config import Settings
from budget.manager import BudgetManager
from budget.tracker import start_usage_tracker
from events import Topology, utc_now
from services.ops import prepare

from enforcement import projection_workers, stack_settings
from support import publish, query_service, usage_event, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def settings(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> AsyncIterator[Settings]:
    """The policies, spend and alerts workers and the query service, for the test."""
    settings = stack_settings(nats_url, db, topology, tmp_path)
    await prepare(nats_url, db, settings)
    async with (
        projection_workers(nc, settings, "policies", "spend", "alerts"),
        query_service(nc, settings),
    ):
        yield settings


async def test_the_seeds_alert_rule_example_and_spend_summary_evaluation(
    nc: Client, topology: Topology, settings: Settings
) -> None:
    # The seed's imports and examples, with ``modules.budget`` spelled ``budget``.
    from budget.alerts import AlertRule, AlertSeverity
    from budget.models import BudgetPeriod, BudgetPolicy, BudgetScope

    now = utc_now()
    await publish(
        nc,
        topology,
        [
            usage_event(cost="76.00", user="alice", at=now - timedelta(minutes=2)),
            usage_event(cost="9.60", user="bob", at=now - timedelta(minutes=1)),
        ],
    )
    tracker = await start_usage_tracker(settings)
    try:
        manager = BudgetManager(settings, tracker)
        engine = AlertEngine(settings, tracker)
        policy = BudgetPolicy(
            name="Monthly Global Budget",
            scope=BudgetScope.GLOBAL,
            period=BudgetPeriod.MONTHLY,
            limit_amount=100.00,
            soft_limit_percent=80,
        )
        await manager.set_policy(policy)
        bob = BudgetPolicy(
            name="Bob", scope=BudgetScope.USER, scope_key="bob", limit_amount=Decimal(10)
        )
        await manager.set_policy(bob)
        # The same limit counted in another zone's months: not the summary's UTC month.
        tokyo = bob.model_copy(update={"policy_id": "bob-tokyo", "timezone": "Asia/Tokyo"})
        await manager.set_policy(tokyo)

        rule = AlertRule(
            name="High Spend Warning",
            threshold_percent=75,
            severity=AlertSeverity.WARNING,
            channels=["ui", "log"],
            cooldown_minutes=60,  # Don't repeat for 1 hour
        )
        await engine.add_rule(rule)

        async def summarized() -> bool:
            """the spend worker has counted both calls"""
            rows = await manager.get_spend_summary()
            return any(r.scope == "global" and r.cost == Decimal("85.60") for r in rows)

        await wait_for(summarized)
        alerts = await engine.evaluate_thresholds(await manager.get_spend_summary())
    finally:
        await tracker.close()
    assert sorted((a.policy_name, a.scope_key, a.threshold_percent) for a in alerts) == [
        ("Bob", "bob", Decimal(75)),
        ("Bob", "bob", Decimal(80)),
        ("Bob", "bob", Decimal(95)),
        ("Monthly Global Budget", "*", Decimal(75)),
        ("Monthly Global Budget", "*", Decimal(80)),
    ]
    assert {a.rule_name for a in alerts if a.threshold_percent == 75} == {"High Spend Warning"}


async def test_a_spend_summary_right_after_record_usage_counts_the_calls(
    settings: Settings,
) -> None:
    """The seed's record_usage, then get_spend_summary at once: the summary has the calls
    (it had read the projection before the spend worker saw them: no row at all)."""
    from budget.models import BudgetPeriod, BudgetScope

    tracker = await start_usage_tracker(settings)
    try:
        manager = BudgetManager(settings, tracker)
        recorded = [
            await tracker.record_usage(
                model="gpt-4o",
                provider="openai",
                input_tokens=500,
                output_tokens=250,
                user_id="user123",
            )
            for _ in range(3)
        ]
        summary = await manager.get_spend_summary(BudgetPeriod.MONTHLY, BudgetScope.USER)
    finally:
        await tracker.close()
    cost = sum((event.cost or Decimal(0) for event in recorded), Decimal(0))
    assert cost > 0
    assert [(r.scope_key, r.cost, r.requests) for r in summary] == [("user123", cost, 3)]


async def test_acknowledging_or_resolving_an_unknown_alert_says_so(settings: Settings) -> None:
    """As ``remove_rule`` and ``delete_policy`` do: a mistyped id is False, not a success."""
    tracker = await start_usage_tracker(settings)
    try:
        engine = AlertEngine(settings, tracker)
        unknown = uuid.uuid4()
        assert await engine.acknowledge_alert(unknown, "ops") is False
        assert await engine.resolve_alert(unknown) is False
    finally:
        await tracker.close()


async def test_the_seeds_alert_management_reads_each_active_alerts_fields(
    nc: Client, topology: Topology, settings: Settings
) -> None:
    """``active = engine.get_active_alerts(...)`` then ``engine.acknowledge_alert(alert_id,
    ...)``: an active alert has the alert's ``alert_id``, ``severity``, ``message``...
    (they were only under ``.alert``: ``AttributeError`` on ``alert.alert_id``)."""
    await publish(nc, topology, [usage_event(cost=None, model="gpt-4o")])
    tracker = await start_usage_tracker(settings)
    try:
        engine = AlertEngine(settings, tracker)

        async def raised() -> bool:
            """the evaluator has raised the unpriced-usage alert"""
            return bool(await engine.get_active_alerts(policy_id=None, unacknowledged_only=False))

        await wait_for(raised)
        [alert] = await engine.get_active_alerts(policy_id=None, unacknowledged_only=False)
        assert alert.alert_id == alert.alert.alert_id
        assert (alert.severity, alert.rule_id) == ("warning", "default-unpriced")
        assert "gpt-4o used without a price" in alert.message
        assert await engine.acknowledge_alert(alert.alert_id, "ops") is True
        assert await engine.resolve_alert(alert.alert_id) is True
        assert await engine.get_active_alerts() == []
        with pytest.raises(AttributeError, match="'StoredAlert' object has no attribute 'nope'"):
            alert.nope  # noqa: B018
    finally:
        await tracker.close()
