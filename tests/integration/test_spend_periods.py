"""The spend projection assigns each event to the UTC day, ISO week and month of its
``occurred_at`` (not of its arrival), exactly as ``budget.periods`` defines them, and
sums money exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from budget.periods import Period, period_start
from events import Topology
from projections.spend import SpendProjection

from support import catch_up, publish, rows, usage_event

# Instants right around the boundaries that matter: midnights, Mondays, month and year ends.
EDGES = [
    datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2027, 1, 1, tzinfo=UTC),
    datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC),
    datetime(2028, 2, 29, 12, tzinfo=UTC),
    datetime(2026, 11, 29, 23, 59, 59, 999999, tzinfo=UTC),  # a Sunday
    datetime(2026, 11, 30, tzinfo=UTC),  # the Monday after
    datetime(2026, 3, 29, 1, 30, tzinfo=UTC),  # Europe's DST change: UTC is unaffected
]
instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)
costs = st.decimals(min_value=0, max_value=Decimal("1000"), places=12)


@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(instants, costs), min_size=50, max_size=200))
async def test_every_event_lands_in_its_own_day_week_and_month(
    nc: Client, db: str, topology: Topology, generated: list[tuple[datetime, Decimal]]
) -> None:
    cases = [(at, Decimal("0.000001")) for at in EDGES] + generated
    events = [
        usage_event(at=at, cost=str(cost), model=f"model-{i}") for i, (at, cost) in enumerate(cases)
    ]
    await publish(nc, topology, events)
    await catch_up(SpendProjection(), nc, db, topology)

    found = await rows(
        db,
        "SELECT scope_key, period, period_start, cost FROM spend_totals WHERE scope = 'model'",
    )
    expected = {
        (event.model, p.value, period_start(p, event.occurred_at), event.cost)
        for event in events
        for p in Period
    }
    assert set(found) == expected
    total = await rows(
        db,
        "SELECT sum(cost) FROM spend_totals WHERE scope = 'global' AND period = 'daily'",
    )
    assert total == [(sum((e.cost or Decimal(0) for e in events), Decimal(0)),)]


async def test_a_late_event_counts_in_the_period_it_happened(
    nc: Client, db: str, topology: Topology
) -> None:
    yesterday = datetime.now(UTC) - timedelta(days=1)
    await publish(nc, topology, [usage_event(at=yesterday, cost="2.5")])
    await catch_up(SpendProjection(), nc, db, topology)
    assert await rows(
        db,
        "SELECT period_start, cost FROM spend_totals WHERE scope = 'global' AND period = 'daily'",
    ) == [(yesterday.date(), Decimal("2.5"))]
