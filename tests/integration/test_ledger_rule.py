"""Every projection that counts usage applies corrections by the one ledger rule
(projections/ledger.py), on real NATS and PostgreSQL: a late re-send changes nothing, a
correction counts where its event counted, an unknown one is dead-lettered, no total goes
below zero, and every projection's totals are the rule's under any batch split."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from budget.pricing import PriceOverride, PricingRegistry
from events import PolicySet, Topology, UsageRecorded, UsageRepriced, encode
from projections.db import connect
from projections.engine.deadletter import recent_dead_letters
from projections.history import HistoryProjection
from projections.queries import usage_between
from projections.registry import get_projection
from projections.reports import ReportsProjection
from projections.spend import SpendProjection
from services.reprice import correction_for

from ledger_logs import (
    Step,
    applied,
    build_log,
    ledger_totals,
    run_fresh_version,
    split,
    steps,
    steps_costing,
)
from money_strategies import maximal_costs
from support import catch_up, mispriced, publish, rows, usage_event

AT = datetime(2026, 5, 4, 12, 7, tzinfo=UTC)
COUNTING = ("spend", "history", "reports", "alerts")


def acme(input_rate: str) -> PricingRegistry:
    return PricingRegistry(
        [
            PriceOverride(
                provider="acme",
                model="acme-1",
                rates={
                    "input_uncached": Decimal(input_rate),
                    "input_cache_read": Decimal(input_rate),
                    "output_text": Decimal(2),
                },
                effective_from=date(2026, 1, 1),
            )
        ]
    )


async def project_all(nc: Client, db: str, topology: Topology) -> None:
    for name in COUNTING:
        await catch_up(get_projection(name), nc, db, topology)


async def reprice(db: str, registry: PricingRegistry) -> UsageRepriced:
    """The one correction ``budget reprice`` would append now."""
    conn = await connect(db)
    try:
        recorded = await usage_between(conn, AT - timedelta(days=1), AT + timedelta(days=1))
    finally:
        await conn.close()
    (usage,) = recorded
    correction = correction_for(usage, registry, "test")
    assert correction is not None
    return correction


async def resend_late(nc: Client, topology: Topology, event: UsageRepriced) -> None:
    """As a spool re-send after the duplicate window: same event, another message id."""
    ack = await nc.jetstream().publish(
        topology.event_subject(event.SUBJECT),
        encode(event),
        headers={"Nats-Msg-Id": f"late-{event.event_id}"},
    )
    assert not ack.duplicate


async def costs_everywhere(db: str) -> dict[str, list[tuple[object, ...]]]:
    """Each projection's view of the (one) usage event: cost and unpriced count."""
    return {
        "spend": await rows(
            db,
            "SELECT sum(cost), sum(unpriced_requests) FROM spend_buckets WHERE scope = 'global'",
        ),
        "alerts": await rows(
            db,
            "SELECT sum(cost), sum(unpriced_requests) FROM alert_spend_buckets"
            " WHERE scope = 'global'",
        ),
        "reports": await rows(
            db,
            "SELECT sum(cost), sum(unpriced_requests) FROM report_daily WHERE dimension = 'total'",
        ),
        "history": await rows(
            db, "SELECT sum(cost), count(*) FILTER (WHERE cost IS NULL) FROM usage_history"
        ),
    }


async def test_a_correction_resent_late_changes_nothing_anywhere(
    nc: Client, db: str, topology: Topology
) -> None:
    await publish(nc, topology, [mispriced("5", at=AT)])
    await project_all(nc, db, topology)
    first = await reprice(db, acme("1"))
    await publish(nc, topology, [first])
    await project_all(nc, db, topology)
    second = await reprice(db, acme("3"))
    await publish(nc, topology, [second])
    await project_all(nc, db, topology)
    assert second.cost is not None and second.cost != first.cost

    await resend_late(nc, topology, first)
    await project_all(nc, db, topology)

    found = await costs_everywhere(db)
    assert found == {name: [(second.cost, 0)] for name in found}
    assert await rows(db, "SELECT price ->> 'data_version' FROM usage_history") == [
        (second.price.data_version if second.price else None,)
    ]
    # one ledger for every consumer that counts usage, the alert evaluator included
    assert await rows(db, "SELECT event_id FROM usage_ledger_corrections ORDER BY stream_seq") == [
        (first.event_id,),
        (second.event_id,),
    ]


def misplaced(event: UsageRecorded, cost: str) -> UsageRepriced:
    """A correction of ``event`` that claims another time and other scopes."""
    return UsageRepriced(
        occurred_at=event.occurred_at + timedelta(days=40),
        corrects=event.event_id,
        provider="other",
        model="other-1",
        user_id="mallory",
        project_id="elsewhere",
        cost=Decimal(cost),
        reason="test",
    )


async def test_a_correction_counts_where_its_event_counted_and_nothing_goes_negative(
    nc: Client, db: str, topology: Topology
) -> None:
    usage = usage_event(at=AT, cost="5", user="bob", project="apollo")
    await publish(nc, topology, [usage, misplaced(usage, "2")])
    await project_all(nc, db, topology)

    for table in ("spend_buckets", "alert_spend_buckets"):
        assert await rows(
            db, f"SELECT scope, scope_key, bucket_start, cost FROM {table} ORDER BY 1, 2"
        ) == [
            ("global", "*", datetime(2026, 5, 4, 12, tzinfo=UTC), Decimal(2)),
            ("model", "gpt-4o", datetime(2026, 5, 4, 12, tzinfo=UTC), Decimal(2)),
            ("project", "apollo", datetime(2026, 5, 4, 12, tzinfo=UTC), Decimal(2)),
            ("provider", "openai", datetime(2026, 5, 4, 12, tzinfo=UTC), Decimal(2)),
            ("user", "bob", datetime(2026, 5, 4, 12, tzinfo=UTC), Decimal(2)),
        ]
    for table in ("report_quarterly", "report_daily"):
        found = await rows(db, f"SELECT dimension, key1, key2, cost FROM {table} ORDER BY 1")
        assert found == [
            ("kind", "chat", "", Decimal(2)),
            ("model", "openai", "gpt-4o", Decimal(2)),
            ("project", "apollo", "", Decimal(2)),
            ("provider", "openai", "", Decimal(2)),
            ("total", "", "", Decimal(2)),
            ("user", "bob", "", Decimal(2)),
        ]
    negative = "SELECT count(*) FROM {} WHERE cost < 0 OR unpriced_requests < 0"
    for table in ("spend_buckets", "alert_spend_buckets", "report_quarterly", "report_daily"):
        assert await rows(db, negative.format(table)) == [(0,)]
    assert await rows(db, "SELECT user_id, cost FROM usage_history") == [("bob", Decimal(2))]


@pytest.mark.parametrize("corrected", ["never", "later in the same batch"])
async def test_a_correction_of_an_event_unknown_at_its_place_is_dead_lettered_and_the_rest_applied(
    nc: Client, db: str, topology: Topology, corrected: str
) -> None:
    """Of an event never recorded, or recorded only after it (one batch holds both, which
    must not decide the verdict: two batches would refuse it)."""
    target = usage_event(at=AT, cost="5")
    stray = misplaced(target, "1")
    log = [usage_event(at=AT, cost="4"), stray, usage_event(at=AT, cost="3")]
    if corrected != "never":
        log.append(target)
    await publish(nc, topology, log)
    await project_all(nc, db, topology)

    found = await costs_everywhere(db)
    total = Decimal(7 if corrected == "never" else 12)
    assert found == {name: [(total, 0)] for name in found}
    letters = await recent_dead_letters(nc.jetstream(), topology)
    assert sorted(letter.consumer for letter in letters) == sorted(f"{n}-v1" for n in COUNTING)
    for letter in letters:
        assert f"repriced usage event {target.event_id}" in letter.reason
        assert "has not recorded" in letter.reason


async def test_repricing_back_to_an_earlier_price_is_applied(
    nc: Client, db: str, topology: Topology
) -> None:
    await publish(nc, topology, [mispriced("5", at=AT)])
    await project_all(nc, db, topology)
    to_b = await reprice(db, acme("1"))
    await publish(nc, topology, [to_b])
    await project_all(nc, db, topology)
    await publish(nc, topology, [await reprice(db, acme("3"))])
    await project_all(nc, db, topology)

    back_to_b = await reprice(db, acme("1"))
    assert back_to_b.cost == to_b.cost
    assert back_to_b.event_id != to_b.event_id
    await publish(nc, topology, [back_to_b])
    await project_all(nc, db, topology)

    found = await costs_everywhere(db)
    assert found == {name: [(to_b.cost, 0)] for name in found}


async def test_a_cost_with_all_its_digits_corrected_to_zero_leaves_every_total_at_zero(
    nc: Client, db: str, topology: Topology
) -> None:
    """At 28 digits, the difference left -2.1e-17 in every bucket after PostgreSQL's exact sum."""
    usage = usage_event(at=AT, cost="123456789012.1234567890123456789012345678901234567890")
    await publish(nc, topology, [usage, misplaced(usage, "0")])
    await project_all(nc, db, topology)

    found = await costs_everywhere(db)
    assert found == {name: [(Decimal(0), 0)] for name in found}
    nonzero = "SELECT count(*) FROM {} WHERE cost <> 0"
    for table in ("spend_buckets", "alert_spend_buckets", "report_quarterly", "report_daily"):
        assert await rows(db, nonzero.format(table)) == [(0,)]


TOTALS_BY_PROJECTION = [
    (
        SpendProjection(),
        "SELECT coalesce(sum(cost), 0), coalesce(sum(unpriced_requests), 0),"
        " count(*) FILTER (WHERE cost < 0 OR unpriced_requests < 0)"
        " FROM {spend_buckets} WHERE scope = 'global'",
    ),
    *(
        (
            ReportsProjection(),
            "SELECT coalesce(sum(cost), 0), coalesce(sum(unpriced_requests), 0),"
            " count(*) FILTER (WHERE cost < 0 OR unpriced_requests < 0)"
            f" FROM {{{table}}} WHERE dimension = 'total'",
        )
        for table in ("report_quarterly", "report_daily")
    ),
    (
        HistoryProjection(),
        "SELECT coalesce(sum(cost), 0), count(*) FILTER (WHERE cost IS NULL),"
        " count(*) FILTER (WHERE cost < 0) FROM {usage_history}",
    ),
]


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(generated=steps, cuts=st.lists(st.booleans(), max_size=45))
async def test_every_projection_totals_by_the_ledger_rule_under_any_batch_split(
    db: str, generated: list[Step], cuts: list[bool]
) -> None:
    events = [e for e in build_log(generated) if not isinstance(e, PolicySet)]
    cost, unpriced = ledger_totals(events)
    log = applied(events)
    for projection, query in TOTALS_BY_PROJECTION:
        for batches in ([log], split(log, cuts)):
            found = await run_fresh_version(db, projection, batches, [query])
            assert found == [[(cost, unpriced, 0)]], projection.name


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(generated=steps_costing(maximal_costs), cuts=st.lists(st.booleans(), max_size=45))
async def test_every_projection_totals_exactly_at_the_contracts_maxima(
    db: str, generated: list[Step], cuts: list[bool]
) -> None:
    events = [e for e in build_log(generated) if not isinstance(e, PolicySet)]
    cost, unpriced = ledger_totals(events)
    log = applied(events)
    for projection, query in TOTALS_BY_PROJECTION:
        found = await run_fresh_version(db, projection, split(log, cuts), [query])
        assert found == [[(cost, unpriced, 0)]], projection.name
