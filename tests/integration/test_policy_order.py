"""Policy and alert rule changes are ordered by their position in the log, on real NATS
and PostgreSQL: a delete from a host whose clock is behind still deletes (in the policies
projection, the alert evaluator's copy and so the enforcer's snapshot), and a late re-send
of an older change (past JetStream's duplicate window) changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client

from events import (
    AlertRule,
    AlertRuleRemoved,
    AlertRuleSet,
    BudgetPolicy,
    PolicyDeleted,
    PolicySet,
    Topology,
    utc_now,
)
from projections.alerts import AlertsProjection, load_rules
from projections.db import connect
from projections.engine.projection import Projection, physical
from projections.policies import PoliciesProjection, load_policies

from enforcement import enforcement_stack, stack_settings
from support import catch_up, publish, wait_for

pytestmark = pytest.mark.integration
NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)
BEHIND = NOW - timedelta(hours=1)
"""What a host whose clock is an hour behind stamps on the events it publishes."""


def cap(name: str) -> BudgetPolicy:
    return BudgetPolicy(policy_id="cap", name=name, limit_amount=Decimal(5))


async def policies_in(db: str, log: str) -> list[BudgetPolicy]:
    conn = await connect(db)
    try:
        return await load_policies(conn, physical(log, 1))
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("projection", "log"),
    [(PoliciesProjection(), "budget_policy_log"), (AlertsProjection(), "alert_policy_log")],
    ids=["policies", "alerts"],
)
async def test_a_delete_stamped_earlier_still_deletes_and_a_late_resend_changes_nothing(
    nc: Client, db: str, topology: Topology, projection: Projection, log: str
) -> None:
    first = PolicySet(occurred_at=NOW, policy=cap("first"))
    await publish(nc, topology, [first, PolicyDeleted(occurred_at=BEHIND, policy_id="cap")])
    await catch_up(projection, nc, db, topology)
    assert await policies_in(db, log) == []

    # set again by the slow host, then the first set re-sent from a spool
    again = PolicySet(occurred_at=BEHIND, policy=cap("again"))
    await publish(nc, topology, [again])
    await publish(nc, topology, [first], msg_id=False)
    await catch_up(projection, nc, db, topology)
    assert await policies_in(db, log) == [cap("again")]


async def test_alert_rules_follow_the_log_too(nc: Client, db: str, topology: Topology) -> None:
    rule = AlertRule(rule_id="half", name="Half", threshold_percent=50)
    added = AlertRuleSet(occurred_at=NOW, rule=rule)
    await publish(nc, topology, [added, AlertRuleRemoved(occurred_at=BEHIND, rule_id="half")])
    await publish(nc, topology, [added], msg_id=False)
    await catch_up(AlertsProjection(), nc, db, topology)
    conn = await connect(db)
    try:
        rules = await load_rules(conn, physical("alert_rule_log", 1))
    finally:
        await conn.close()
    assert "half" not in {r.rule_id for r in rules}
    assert "default-anomaly" in {r.rule_id for r in rules}


async def test_the_enforcer_stops_enforcing_a_policy_deleted_by_a_slow_host(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    async with enforcement_stack(nc, settings) as stack:
        policy = await stack.set_policy(limit_amount="0.01", action="block")
        check = stack.tracker.check_budget
        assert not (await check("gpt-4o", estimated_cost=Decimal("0.10"))).allowed
        slow_clock = utc_now() - timedelta(hours=1)
        await publish(
            nc, topology, [PolicyDeleted(occurred_at=slow_clock, policy_id=policy.policy_id)]
        )

        async def allowed() -> bool:
            """a check under the deleted policy is allowed"""
            return (await check("gpt-4o", estimated_cost=Decimal("0.10"))).allowed

        await wait_for(allowed, within=15)
    assert await policies_in(db, "budget_policy_log") == []
