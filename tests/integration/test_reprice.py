"""Repricing appends corrections; the projections apply each once, and replay agrees."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from nats.aio.client import Client

from budget.periods import Period
from budget.pricing import PriceOverride, PricingRegistry
from budget.pricing.rates import PRICED_APART
from events import Topology, Usage, UsageRecorded, UsageRepriced
from projections.db import connect
from projections.engine.rebuild import rebuild
from projections.history import HistoryProjection
from projections.queries import usage_between
from projections.spend import SpendProjection
from services.reprice import plan_corrections

from support import catch_up, mispriced, publish, rows, start_of, usage_event

AT = start_of(Period.DAILY, ago=2) + timedelta(hours=12)
ACME = PriceOverride(
    provider="acme",
    model="acme-1",
    rates={"input_uncached": Decimal(1), "input_cache_read": Decimal(1), "output_text": Decimal(2)},
    effective_from=date(2026, 1, 1),
)
# usage_event(): 500 input (100 of them cached) and 250 output tokens
ACME_COST = Decimal(500) / 10**6 + Decimal(250) * 2 / 10**6


async def project_all(nc: Client, db: str, topology: Topology) -> None:
    for projection in (SpendProjection(), HistoryProjection()):
        await catch_up(projection, nc, db, topology)


async def corrections(db: str, registry: PricingRegistry) -> list[UsageRepriced]:
    conn = await connect(db)
    try:
        recorded = await usage_between(conn, AT - timedelta(days=1), AT + timedelta(days=1))
    finally:
        await conn.close()
    return [c.correction for c in plan_corrections(recorded, registry, "test")]


async def global_month(db: str) -> list[tuple[object, ...]]:
    return await rows(
        db,
        "SELECT cost, requests, unpriced_requests FROM spend_totals"
        " WHERE scope = 'global' AND period = 'monthly'",
    )


async def test_unpriced_usage_gets_priced_once_a_price_exists(
    nc: Client, db: str, topology: Topology
) -> None:
    unpriced = [usage_event(at=AT, cost=None, provider="acme", model="acme-1") for _ in range(3)]
    await publish(nc, topology, unpriced)
    await project_all(nc, db, topology)
    assert await global_month(db) == [(Decimal(0), 3, 3)]

    fixes = await corrections(db, PricingRegistry([ACME]))
    assert [f.cost for f in fixes] == [ACME_COST] * 3
    await publish(nc, topology, fixes)
    await project_all(nc, db, topology)

    assert await global_month(db) == [(3 * ACME_COST, 3, 0)]
    assert await rows(db, "SELECT DISTINCT cost, unpriced_reason FROM usage_history") == [
        (ACME_COST, None)
    ]
    assert await corrections(db, PricingRegistry([ACME])) == []


async def test_a_wrong_cost_is_corrected_in_every_scope_and_period(
    nc: Client, db: str, topology: Topology
) -> None:
    await publish(nc, topology, [mispriced("99", at=AT, user="bob")])
    await project_all(nc, db, topology)
    await publish(nc, topology, await corrections(db, PricingRegistry([ACME])))
    await project_all(nc, db, topology)

    found = await rows(db, "SELECT scope, period, cost FROM spend_totals ORDER BY 1, 2")
    assert {cost for _, _, cost in found} == {ACME_COST}
    assert len(found) == 5 * 3  # global, user, provider, model, project x day, week, month


async def test_a_correction_delivered_twice_is_applied_once(
    nc: Client, db: str, topology: Topology
) -> None:
    await publish(nc, topology, [mispriced("5", at=AT)])
    await project_all(nc, db, topology)
    fixes = await corrections(db, PricingRegistry([ACME]))
    await publish(nc, topology, fixes + fixes, msg_id=False)
    await project_all(nc, db, topology)
    assert await global_month(db) == [(ACME_COST, 1, 0)]


async def test_rebuild_with_corrections_equals_the_live_totals(
    nc: Client, db: str, topology: Topology
) -> None:
    events = [
        usage_event(at=AT + timedelta(hours=i), cost=None, provider="acme", model="acme-1")
        for i in range(5)
    ]
    await publish(nc, topology, events)
    await project_all(nc, db, topology)
    await publish(nc, topology, await corrections(db, PricingRegistry([ACME])))
    await project_all(nc, db, topology)
    live = await rows(db, "SELECT * FROM spend_buckets_v1 ORDER BY 1, 2, 3")
    await rebuild(SpendProjection(), nc=nc, database_url=db, topology=topology, swap=False)
    assert await rows(db, "SELECT * FROM spend_buckets_v2 ORDER BY 1, 2, 3") == live


async def test_planning_twice_gives_the_same_correction_ids(
    nc: Client, db: str, topology: Topology
) -> None:
    await publish(nc, topology, [usage_event(at=AT, cost=None, provider="acme", model="acme-1")])
    await project_all(nc, db, topology)
    first = await corrections(db, PricingRegistry([ACME]))
    second = await corrections(db, PricingRegistry([ACME]))
    assert [c.event_id for c in first] == [c.event_id for c in second]
    assert len(first) == 1


async def test_what_price_data_cannot_tell_is_left_as_it_was(
    nc: Client, db: str, topology: Topology
) -> None:
    """A cost the host gave (an estimate, or a publisher's own figure) is kept; a call
    unpriced for want of usage, or for audio tokens its counts hold as text, stays
    unpriced: repricing their token counts would say $0 or the text rate."""
    given = usage_event(at=AT, cost="0.50", provider="acme", model="acme-1")
    no_usage = UsageRecorded.model_validate(
        usage_event(at=AT, cost=None, provider="acme", model="acme-1").model_dump()
        | {"usage": Usage(), "unpriced_reason": "no usage in the response and no estimate"}
    )
    audio = UsageRecorded.model_validate(
        usage_event(at=AT, cost=None, provider="acme", model="acme-1").model_dump()
        | {"unpriced_reason": f"... has no price for 1000 audio tokens ({PRICED_APART}, ...)"}
    )
    await publish(nc, topology, [given, no_usage, audio])
    await project_all(nc, db, topology)

    assert await corrections(db, PricingRegistry([ACME])) == []
