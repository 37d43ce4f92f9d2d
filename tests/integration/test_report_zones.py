"""Reports count the days and weeks of any IANA zone exactly, from the rollups: zones 30 and
45 minutes off the hour, DST days of 23 and 25 hours, midnights a DST change skips. The
reference is each event's own local day, computed with zoneinfo."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from budget.config import Settings
from budget.periods import local_midnight
from budget.reports import ReportGenerator
from events import Topology, UsageRecorded, utc_now
from projections.db import connect
from projections.engine.checkpoints import ensure_projection
from projections.engine.projection import Applied, Connection
from projections.registry import get_projection
from projections.report_queries import ReportBuilder, Spend

from support import apply_batch, catch_up, publish, query_service, usage_event

pytestmark = pytest.mark.integration

ZONES = (
    "UTC",
    "Asia/Kolkata",  # +5:30
    "Asia/Kathmandu",  # +5:45
    "Australia/Eucla",  # +8:45
    "Pacific/Chatham",  # +12:45 / +13:45 with DST
    "America/St_Johns",  # -3:30 with DST
    "Australia/Lord_Howe",  # a 30-minute DST change
    "Europe/London",
    "America/New_York",
    "America/Santiago",  # DST changes at midnight: a day starts at 01:00
    "America/Havana",  # likewise
    "Asia/Tehran",
    "Pacific/Kiritimati",  # +14
    "Pacific/Pago_Pago",  # -11
)
# Within the last two years (events older than the contract's window are refused).
FIRST_DAY = utc_now().date() - timedelta(days=700)
LAST_DAY = utc_now().date() - timedelta(days=40)
_SEQ = itertools.count(1)
_MICRO = timedelta(microseconds=1)


@pytest.fixture
async def conn(db: str) -> AsyncIterator[Connection]:
    connection = await connect(db)
    await ensure_projection(connection, get_projection("reports"))
    yield connection
    await connection.close()


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[ZoneInfo, date, int, list[tuple[datetime, Decimal]]]:
    """A zone, a run of local days, and events on, just before and just after its local
    midnights (and anywhere around them)."""
    tz = ZoneInfo(draw(st.sampled_from(ZONES)))
    first = draw(st.dates(min_value=FIRST_DAY, max_value=LAST_DAY))
    days = draw(st.integers(min_value=1, max_value=21))
    bounds = [local_midnight(first + timedelta(n), tz) for n in range(-1, days + 2)]
    near = st.tuples(st.sampled_from(bounds), st.sampled_from((-_MICRO, timedelta(0), _MICRO))).map(
        lambda pair: pair[0] + pair[1]
    )
    anywhere = st.datetimes(
        min_value=bounds[0].replace(tzinfo=None),
        max_value=bounds[-1].replace(tzinfo=None),
        timezones=st.just(UTC),
    )
    costs = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal(100), places=6)
    events = draw(st.lists(st.tuples(near | anywhere, costs), min_size=1, max_size=60))
    return tz, first, days, events


def _applied(event: UsageRecorded) -> Applied:
    return Applied.of(next(_SEQ), event)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenarios())
async def test_local_days_and_weeks_equal_the_sum_of_each_events_own_local_day(
    conn: Connection, scenario: tuple[ZoneInfo, date, int, list[tuple[datetime, Decimal]]]
) -> None:
    tz, first, days, generated = scenario
    project = uuid.uuid4().hex  # each example's own key in the shared rollups
    events = [usage_event(at=at, cost=str(cost), project=project) for at, cost in generated]
    reports = get_projection("reports")
    async with conn.transaction():
        await apply_batch(conn, reports, 1, [_applied(e) for e in events])

    expected: dict[date, Spend] = {}
    for event in events:
        day = event.occurred_at.astimezone(tz).date()
        if first <= day < first + timedelta(days):
            expected[day] = expected.get(day, Spend()).plus(Spend(event.cost or Decimal(0), 1))
    builder = ReportBuilder(conn)
    assert await builder.daily(conn, "project", project, first, days, tz) == expected

    monday = first - timedelta(first.weekday())
    weeks = [local_midnight(monday + timedelta(7 * n), tz) for n in range(days // 7 + 2)]
    by_week = await builder.spans(conn, "project", project, weeks)
    for n, week in enumerate(by_week):
        start = monday + timedelta(7 * n)
        mine = [
            e for e in events if start <= e.occurred_at.astimezone(tz).date() < start + timedelta(7)
        ]
        assert week == Spend(sum((e.cost or Decimal(0) for e in mine), Decimal(0)), len(mine))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.data(),
    st.lists(
        st.tuples(
            st.datetimes(
                min_value=datetime.combine(LAST_DAY, time(0)),
                max_value=datetime.combine(LAST_DAY + timedelta(4), time(0)),
                timezones=st.just(UTC),
            ),
            st.sampled_from(("u1", "u2", "u3")),
        ),
        min_size=1,
        max_size=40,
    ),
)
async def test_a_windows_totals_per_key_equal_the_sum_of_its_own_calls(
    conn: Connection, data: st.DataObject, calls: list[tuple[datetime, str]]
) -> None:
    """Any window on quarter hours (a few quarter hours to four days, its ends anywhere in
    their UTC days) lists each key with calls in it, with their sums, and no other."""
    prefix = uuid.uuid4().hex  # each example's own users in the shared rollups
    events = [usage_event(at=at, user=f"{prefix}-{user}", cost="0.25") for at, user in calls]
    async with conn.transaction():
        await apply_batch(conn, get_projection("reports"), 1, [_applied(e) for e in events])
    origin = datetime.combine(LAST_DAY, time(0), UTC)
    start, end = sorted(
        origin + timedelta(minutes=15) * n
        for n in data.draw(st.lists(st.integers(0, 4 * 96), min_size=2, max_size=2, unique=True))
    )
    expected: dict[str, tuple[Decimal, int]] = {}
    for event in events:
        if start <= event.occurred_at < end and event.user_id is not None:
            cost, count = expected.get(event.user_id, (Decimal(0), 0))
            expected[event.user_id] = (cost + Decimal("0.25"), count + 1)
    totals = await ReportBuilder(conn).totals(conn, "user", start, end)
    assert {t.key1: (t.cost, t.requests) for t in totals if t.key1.startswith(prefix)} == expected


async def test_the_trend_counts_the_days_of_the_zone_asked_for(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    """Two calls a minute either side of Kathmandu's last midnight: one UTC day, two
    Kathmandu days; over HTTP/NATS as a host app asks."""
    kathmandu = ZoneInfo("Asia/Kathmandu")
    midnight = local_midnight(utc_now().astimezone(kathmandu).date(), kathmandu)
    calls = [midnight - timedelta(minutes=1), midnight + timedelta(minutes=1)]
    if calls[1] > utc_now():  # just after midnight there: the first call is yesterday's
        calls = [c - timedelta(days=1) for c in calls]
    await publish(nc, topology, [usage_event(cost="1.00", at=at) for at in calls])
    await catch_up(get_projection("reports"), nc, db, topology)
    settings = Settings(
        nats_url=nats_url, database_url=db, subject_prefix=topology.prefix, spool_dir=tmp_path
    )
    async with query_service(nc, settings) as queries:
        generator = ReportGenerator(queries)
        local = await generator.generate_trend_report(days=3, tz="Asia/Kathmandu")
        utc = await generator.generate_trend_report(days=3)
        with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
            await generator.generate_trend_report(tz="Mars/Olympus")
    assert sorted(r["cost_usd"] for r in local.main.records() if r["requests"]) == [
        Decimal("1.00"),
        Decimal("1.00"),
    ]
    assert [r["cost_usd"] for r in utc.main.records() if r["requests"]] == [Decimal("2.00")]
    assert local.start.astimezone(kathmandu).time() == time(0)
    assert any("Asia/Kathmandu" in note for note in local.notes)
    assert not any("time zone" in note for note in utc.notes)
