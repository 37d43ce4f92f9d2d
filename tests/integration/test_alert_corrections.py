"""The alert evaluator counts repricing corrections toward thresholds, and raises the same
alerts for a sequence of usage and corrections however the log is split into batches, with
totals by the ledger rule and no bucket below zero (real PostgreSQL; the first test also
real NATS)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from events import AlertRule, AlertRuleSet, AlertType, Topology
from projections.alerts import AlertsProjection
from projections.engine.projection import Applied

from ledger_logs import (
    AT,
    Step,
    applied,
    build_log,
    correction,
    daily,
    ledger_totals,
    run_fresh_version,
    split,
    steps,
    steps_costing,
)
from money_strategies import maximal_costs
from support import catch_up, publish, rows, usage_event


async def test_a_correction_that_takes_spend_over_the_limit_raises_the_alert(
    nc: Client, db: str, topology: Topology
) -> None:
    unpriced = usage_event(at=AT, cost=None)
    fix = correction(unpriced, Decimal(2))
    await publish(nc, topology, [daily("1"), unpriced])
    await catch_up(AlertsProjection(), nc, db, topology)
    await publish(nc, topology, [fix])
    await catch_up(AlertsProjection(), nc, db, topology)

    found = await rows(
        db,
        "SELECT alert_type, alert ->> 'caused_by', alert ->> 'spend' FROM alerts"
        " WHERE alert_type <> 'unpriced_usage' ORDER BY 1",  # the unpriced call's own
    )
    assert found == [
        (t.value, str(fix.event_id), "2")
        for t in sorted(
            (AlertType.LIMIT_EXCEEDED, AlertType.THRESHOLD_CRITICAL, AlertType.THRESHOLD_WARNING),
            key=lambda t: t.value,
        )
    ]


# -- the same alerts for every batch split ----------------------------------------------------


async def alerts_raised(db: str, batches: list[list[Applied]]) -> list[list[tuple[Any, ...]]]:
    """Apply the batches through a fresh version of the evaluator: the alerts it stored,
    and its global spend (cost, unpriced calls, buckets below zero)."""
    return await run_fresh_version(
        db,
        AlertsProjection(),
        batches,
        [
            "SELECT alert_id, stream_seq, raised_at, alert FROM {alerts}"
            " ORDER BY stream_seq, alert_id",
            "SELECT coalesce(sum(cost) FILTER (WHERE scope = 'global'), 0),"
            " coalesce(sum(unpriced_requests) FILTER (WHERE scope = 'global'), 0),"
            " count(*) FILTER (WHERE cost < 0 OR unpriced_requests < 0)"
            " FROM {alert_spend_buckets}",
        ],
    )


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(generated=steps, cuts=st.lists(st.booleans(), max_size=45))
async def test_the_alerts_raised_do_not_depend_on_the_batch_split(
    db: str, generated: list[Step], cuts: list[bool]
) -> None:
    await alerts_by_any_split(db, generated, cuts)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(generated=steps_costing(maximal_costs), cuts=st.lists(st.booleans(), max_size=45))
async def test_the_alerts_and_totals_are_exact_at_the_contracts_maxima(
    db: str, generated: list[Step], cuts: list[bool]
) -> None:
    await alerts_by_any_split(db, generated, cuts)


COOLING = AlertRuleSet(
    occurred_at=AT - timedelta(days=1),
    rule=AlertRule(
        rule_id="cooling",
        name="Half, 6-hour cooldown",
        threshold_percent=50,
        cooldown_minutes=6 * 60,
        channels=("log",),
    ),
)
"""A rule whose cooldown holds back some crossings of the generated logs: late ones of one
day near another day's, whichever batch raised that one."""


async def alerts_by_any_split(db: str, generated: list[Step], cuts: list[bool]) -> None:
    """The same alerts whole, split by ``cuts`` and event by event, the cooldown's too;
    totals by the ledger rule."""
    events = [COOLING, *build_log(generated)]
    log = applied(events)
    whole = await alerts_raised(db, [log])
    assert await alerts_raised(db, split(log, cuts)) == whole
    assert await alerts_raised(db, [[a] for a in log]) == whole
    cost, unpriced = ledger_totals(events)
    assert whole[1] == [(cost, unpriced, 0)]
