"""Reports from the materializer's rollups on real NATS and PostgreSQL: totals equal the
spend projection's to the cent; empty windows give empty reports; trend, comparison,
summary with budgets, projection; three export formats."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from nats.aio.client import Client

from budget.config import Settings
from budget.forecast import total_interval
from budget.periods import Period, local_midnight
from budget.report_format import ExportFormat, history_cut_note
from budget.reports import ReportGenerator
from events import (
    BudgetPeriod,
    BudgetPolicy,
    BudgetScope,
    PolicySet,
    Topology,
    UsageRepriced,
    utc_now,
)
from events.queries import MAX_HISTORY_ROWS, ReportQuery
from projections.database_queries import DatabaseQueries
from projections.db import connect
from projections.queries import spend_for_period
from projections.registry import get_projection
from services.api.console.dashboard import _month_by_scope

from support import (
    catch_up,
    publish,
    query_service,
    rows,
    start_of,
    usage_event,
    varied_events,
)

pytestmark = pytest.mark.integration


async def materialize(nc: Client, db: str, topology: Topology, *names: str) -> None:
    for name in ("reports", "spend", *names):
        await catch_up(get_projection(name), nc, db, topology)


@pytest.fixture
async def generator(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> AsyncIterator[ReportGenerator]:
    """Asks over NATS, as a host app does; the query service runs in this process."""
    settings = Settings(
        nats_url=nats_url, database_url=db, subject_prefix=topology.prefix, spool_dir=tmp_path
    )
    async with query_service(nc, settings) as queries:
        yield ReportGenerator(queries)


async def spend_sum(db: str, scope: str, start: datetime, end: datetime) -> dict[str, Decimal]:
    found = await rows(
        db,
        "SELECT scope_key, sum(cost) FROM spend_buckets WHERE scope = %s"
        " AND bucket_start >= %s AND bucket_start < %s GROUP BY 1",
        (scope, start, end),
    )
    return dict(found)


async def test_report_totals_equal_the_spend_projection_to_the_cent(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    first = start_of(Period.MONTHLY, ago=2)
    events = varied_events(3000, first)
    correction = UsageRepriced(
        occurred_at=events[10].occurred_at,
        corrects=events[10].event_id,
        cost=Decimal("1.5"),
        provider=events[10].provider,
        model=events[10].model,
        user_id=events[10].user_id,
        project_id=events[10].project_id,
        reason="test",
    )
    await publish(nc, topology, [*events, correction])
    await materialize(nc, db, topology)
    start = first + timedelta(days=2, hours=5)  # into a day, and across a month's end
    end = first + timedelta(days=37, hours=13)

    total = await generator.generate_report(start, end)
    assert total.main.records()[0]["cost_usd"] == (await spend_sum(db, "global", start, end))["*"]
    by_model = await generator.generate_report(start, end, group_by=["model"])
    assert {r["model"]: r["cost_usd"] for r in by_model.main.records()} == await spend_sum(
        db, "model", start, end
    )
    by_user = await generator.generate_report(start, end, group_by=["user"])
    assert {r["user"]: r["cost_usd"] for r in by_user.main.records()} == await spend_sum(
        db, "user", start, end
    )


async def test_an_empty_window_gives_an_empty_report(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    await publish(nc, topology, varied_events(10))
    await materialize(nc, db, topology)
    far = start_of(Period.MONTHLY) + timedelta(days=365)  # varied_events: months before now
    report = await generator.generate_report(far, far + timedelta(days=7), ["project"])
    assert report.empty and report.main.rows == []
    assert "(no data)" in report.to_markdown()


async def test_grouping_the_rollups_cannot_answer_is_refused_clearly(
    generator: ReportGenerator,
) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="cannot group by colour; choose from provider"):
        await generator.generate_report(start, start + timedelta(days=1), ["colour"])
    with pytest.raises(ValueError, match="do not cross other dimensions"):
        await generator.generate_report(start, start + timedelta(days=1), ["user", "model"])


async def test_calls_without_a_user_are_a_row_named_none_not_a_blank_one(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """A host's calls without a user (or project) were a row keyed "" in a report by user:
    a blank cell, as if a name were missing from the export. It is no user: JSON null, an
    empty CSV cell, "(none)" in Markdown."""
    at = start_of(Period.DAILY, ago=2) + timedelta(hours=12)
    await publish(
        nc,
        topology,
        [usage_event(cost="1.00", at=at), usage_event(cost="2.00", at=at, user=None)],
    )
    await materialize(nc, db, topology)
    window = (at - timedelta(hours=1), at + timedelta(hours=1))
    report = await generator.generate_report(*window, group_by="user")
    assert [(r["user"], r["cost_usd"]) for r in report.main.records()] == [
        (None, Decimal("2.00")),
        ("alice", Decimal("1.00")),
    ]
    assert "| (none) | 2.00 |" in report.to_markdown()
    assert json.loads(report.to_json())["tables"][0]["rows"][0]["user"] is None
    assert "\r\n,2.00," in report.to_csv()
    compared = await generator.generate_comparison_report(
        *window, window[0] - timedelta(days=1), window[1] - timedelta(days=1), group_by="user"
    )
    assert [r["user"] for r in compared.main.records()] == [None, "alice"]


async def test_comparison_gives_absolute_and_percent_change_per_group(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    jan, feb = datetime(2026, 1, 5, tzinfo=UTC), datetime(2026, 2, 5, tzinfo=UTC)
    await publish(
        nc,
        topology,
        [
            usage_event(cost="1.00", at=jan, model="gpt-4o"),
            usage_event(cost="3.00", at=feb, model="gpt-4o"),
            usage_event(cost="2.00", at=feb, model="claude-sonnet-4", provider="anthropic"),
        ],
    )
    await materialize(nc, db, topology)
    report = await generator.generate_comparison_report(
        datetime(2026, 2, 1, tzinfo=UTC),
        datetime(2026, 3, 1, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 2, 1, tzinfo=UTC),
    )
    assert report.main.rows == [
        ("openai", "gpt-4o", *(Decimal(d) for d in ("3.00", "1.00", "2.00", "200.0")), 0, 0),
        ("anthropic", "claude-sonnet-4", Decimal("2.00"), Decimal(0), Decimal("2.00"), None, 0, 0),
    ]
    # February against January: the totals of 28 days against 31
    assert (
        "the windows differ in length (28 days against 31 days): the changes are of their"
        " totals, not of their daily rates"
    ) in report.notes


async def test_a_comparison_of_windows_of_different_lengths_says_so_in_every_export(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """The last 7 days against the 30 before, at the same $10 a day: -76.7 % with nothing
    to say that a week was compared with a month. Weeks across a DST change (167 hours
    against 168) are the same length."""
    today = start_of(Period.DAILY)
    await publish(
        nc,
        topology,
        [usage_event(cost="10.00", at=today - timedelta(days=d, hours=-12)) for d in range(1, 38)],
    )
    await materialize(nc, db, topology)
    week, month = today - timedelta(days=7), today - timedelta(days=37)
    report = await generator.generate_comparison_report(week, today, month, week)
    note = (
        "the windows differ in length (7 days against 30 days): the changes are of their"
        " totals, not of their daily rates"
    )
    assert note in report.notes
    assert report.main.records()[0]["change_percent"] == Decimal("-76.7")
    assert f"- {note}" in report.to_markdown()
    assert note in json.loads(report.to_json())["notes"]
    hours = await generator.generate_comparison_report(
        today - timedelta(hours=36), today, month, week
    )
    assert "(36 hours against 30 days)" in hours.notes[-1]
    new_york = ZoneInfo("America/New_York")  # the week of 2026-11-01, the end of DST
    dst_week = [
        local_midnight(date(2026, 10, 26) + timedelta(days=d), new_york) for d in (0, 7, 14)
    ]
    across = await generator.generate_comparison_report(
        dst_week[0], dst_week[1], dst_week[1], dst_week[2]
    )
    assert not any("differ in length" in n for n in across.notes)


async def test_a_group_of_unpriced_calls_has_no_amount_in_any_report_or_export(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """bob's calls all lack a price: no amount (null, empty, "unpriced"), never 0; carol's
    amount leaves one unpriced call out, and says so."""
    jan, feb = datetime(2026, 1, 5, tzinfo=UTC), datetime(2026, 2, 5, tzinfo=UTC)
    await publish(
        nc,
        topology,
        [
            usage_event(cost=None, at=feb, user="bob"),
            usage_event(cost="1.50", at=jan, user="bob"),
            usage_event(cost="2.00", at=feb, user="carol"),
            usage_event(cost=None, at=feb, user="carol"),
        ],
    )
    await materialize(nc, db, topology)
    february = datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)
    custom = await generator.generate_report(*february, group_by=["user"])
    assert [(r["user"], r["cost_usd"], r["unpriced_requests"]) for r in custom.main.records()] == [
        ("carol", Decimal("2.00"), 1),
        ("bob", None, 1),
    ]
    assert json.loads(custom.to_json())["tables"][0]["rows"][1]["cost_usd"] is None
    assert list(csv.reader(io.StringIO(custom.to_csv())))[2][:4] == ["bob", "", "1", "1"]
    assert "| bob | unpriced | 1 | 1 |" in custom.to_markdown()
    january = datetime(2026, 1, 1, tzinfo=UTC), february[0]
    comparison = await generator.generate_comparison_report(*february, *january, ["user"])
    assert comparison.main.rows == [
        ("carol", Decimal("2.00"), Decimal(0), Decimal("2.00"), None, 1, 0),
        ("bob", None, Decimal("1.50"), None, None, 1, 0),
    ]
    assert "| bob | unpriced | 1.50 |  |  | 1 | 0 |" in comparison.to_markdown()


async def test_a_day_of_unpriced_calls_has_no_amount_in_the_trend_nor_in_any_export(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """Yesterday's one call had no price: no amount (null, empty, "unpriced"), never 0,
    and no change from it or to it; today, without a call, is a true $0."""
    midnight = utc_now().replace(hour=0, minute=0, second=0, microsecond=0)
    await publish(
        nc,
        topology,
        [
            usage_event(cost="0.50", at=midnight - timedelta(hours=36)),
            usage_event(cost=None, at=midnight - timedelta(hours=12)),
        ],
    )
    await materialize(nc, db, topology)
    trend = await generator.generate_trend_report(days=3)
    days = [(midnight - timedelta(days=d)).date() for d in (2, 1, 0)]
    assert trend.main.rows == [
        (days[0], Decimal("0.50"), 1, 0, None),
        (days[1], None, 1, 1, None),
        (days[2], Decimal(0), 0, 0, None),
    ]
    assert json.loads(trend.to_json())["tables"][0]["rows"][1]["cost_usd"] is None
    assert list(csv.reader(io.StringIO(trend.to_csv())))[2] == [
        days[1].isoformat(),
        "",
        "1",
        "1",
        "",
    ]
    assert f"| {days[1].isoformat()} | unpriced | 1 | 1 |  |" in trend.to_markdown()


async def test_a_month_of_unpriced_calls_has_no_actual_amount_in_the_projection(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """Every call of this month lacked a price: its actual is no amount, not $0, the row
    counts them, and a note says the forecast leaves out yesterday's."""
    now = utc_now()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = usage_event(cost=None, at=midnight - timedelta(hours=12))
    await publish(nc, topology, [yesterday, usage_event(cost=None, at=now)])
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_projection_report(days_to_project=3)
    this_month = report.tables[1].records()[0]
    calls = 1 if midnight.day == 1 else 2  # yesterday may be last month
    assert (this_month["actual_usd"], this_month["unpriced_requests"]) == (None, calls)
    assert f"| unpriced | {calls} |" in report.to_markdown()
    assert json.loads(report.to_json())["tables"][1]["rows"][0]["actual_usd"] is None
    assert "1 call in those days had no price: the forecast leaves it out" in report.notes


async def test_usage_history_lists_the_matching_calls_oldest_first(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    at = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    events = [
        usage_event(cost="0.30", at=at + timedelta(minutes=3), user="bob"),
        usage_event(cost="0.10", at=at + timedelta(minutes=1)),
        usage_event(cost="0.20", at=at + timedelta(minutes=2), model="o3"),
        usage_event(cost="9.99", at=at + timedelta(hours=1)),  # outside the window
        usage_event(cost="0.40", at=at + timedelta(minutes=4)),
    ]
    await publish(nc, topology, events)
    await materialize(nc, db, topology, "history")
    window = (at, at + timedelta(minutes=30))

    alice = await generator.get_usage_history(*window, user_id="alice", model="gpt-4o")
    assert [r["cost_usd"] for r in alice.main.records()] == [Decimal("0.10"), Decimal("0.40")]
    first = alice.main.records()[0]
    assert first["occurred_at"] == at + timedelta(minutes=1)
    assert (first["input_tokens"], first["cached_tokens"], first["output_tokens"]) == (
        500,
        100,
        250,
    )
    assert first["event_id"] == str(events[1].event_id)

    spelt = await generator.get_usage_history(*window, provider="OpenAI", user_id="bob")
    assert [r["cost_usd"] for r in spelt.main.records()] == [Decimal("0.30")]

    capped = await generator.get_usage_history(*window, limit=2)
    assert [r["cost_usd"] for r in capped.main.records()] == [Decimal("0.10"), Decimal("0.20")]
    assert any("more than 2 calls match" in note for note in capped.notes)
    with pytest.raises(ValueError, match="limit must be between 1 and 100000"):
        await generator.get_usage_history(*window, limit=0)


async def test_a_history_larger_than_one_nats_message_is_answered_whole_as_the_cli_reads_it(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    at = datetime(2026, 3, 4, 9, tzinfo=UTC)
    # ~1.7 MB of rows, 100 calls a second: the parts' seams fall among calls of one time
    calls = [usage_event(at=at + timedelta(seconds=i // 100), user=f"u{i}") for i in range(10_000)]
    await publish(nc, topology, calls)
    await materialize(nc, db, topology, "history")
    window = (at, at + timedelta(hours=1))
    async with DatabaseQueries(db) as direct:  # the CLI's way: no NATS message between
        for limit in (MAX_HISTORY_ROWS, 9_000):
            query = ReportQuery(kind="history", start=window[0], end=window[1], limit=limit)
            asked = await generator.get_usage_history(*window, limit=limit)
            read = await direct.report(query)
            assert asked.main.rows == read.main.rows
            assert asked.notes == read.notes
    assert len(asked.main.rows) == 9_000
    assert asked.notes == [history_cut_note(9_000)]
    oldest_first = sorted(calls, key=lambda c: (c.occurred_at, c.event_id))  # ties: by id
    assert [r["event_id"] for r in read.main.records()] == [
        str(c.event_id) for c in oldest_first[:9_000]
    ]


async def test_an_unpriced_call_in_the_history_says_unpriced_and_why_in_every_export(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    at = datetime(2026, 3, 3, 9, tzinfo=UTC)
    await publish(nc, topology, [usage_event(cost=None, at=at)])
    await materialize(nc, db, topology, "history")
    report = await generator.get_usage_history(at, at + timedelta(minutes=1))
    [call] = report.main.records()
    assert (call["cost_usd"], call["unpriced_reason"]) == (None, "no price")
    assert "| 250 | unpriced | no price |" in report.to_markdown()
    assert json.loads(report.to_json())["tables"][0]["rows"][0]["cost_usd"] is None
    [row] = csv.DictReader(io.StringIO(report.to_csv()))
    assert (row["cost_usd"], row["unpriced_reason"]) == ("", "no price")


async def test_trend_has_one_point_per_day_summing_to_the_window(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    now = utc_now()
    await publish(
        nc, topology, [usage_event(cost="0.50", at=now - timedelta(days=d)) for d in range(24)]
    )
    await materialize(nc, db, topology)
    daily = await generator.generate_trend_report(days=7, interval="daily")
    assert [r["cost_usd"] for r in daily.main.records()] == [Decimal("0.50")] * 7
    weekly = (await generator.generate_trend_report(days=10, interval="weekly")).main.records()
    # whole weeks from the Monday on or before ten days ago; this week so far last
    assert [r["cost_usd"] for r in weekly[:-1]] == [Decimal("3.50")] * (len(weekly) - 1)
    assert weekly[-1]["cost_usd"] == Decimal("0.50") * (now.weekday() + 1)


async def test_the_trend_gives_the_day_and_week_so_far_no_change_from_a_whole_one(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """$10 on each of the last 14 days and $1 so far today: today (and this week) are not
    a drop of $9 (or of most of a week) in spend, only unfinished."""
    now = utc_now()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    calls = [
        usage_event(cost="10.00", at=midnight - timedelta(hours=12 + 24 * d)) for d in range(14)
    ]
    await publish(nc, topology, [*calls, usage_event(cost="1.00", at=now)])
    await materialize(nc, db, topology)
    daily = await generator.generate_trend_report(days=3)
    assert [r["change_usd"] for r in daily.main.records()] == [None, Decimal(0), None]
    assert f"this day ({now.date()}) so far: no change from a whole day" in daily.notes
    weekly = await generator.generate_trend_report(days=15, interval="weekly")
    *whole, current = weekly.main.records()
    assert current["change_usd"] is None and whole[-1]["change_usd"] is not None
    assert any(note.startswith("this week (") for note in weekly.notes)


async def test_a_trend_point_whose_calls_had_no_price_is_unpriced_never_0(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """Two days ago $1, yesterday only unpriced calls, today $1 and one unpriced call."""
    today = utc_now().replace(hour=12, minute=0, second=0, microsecond=0)
    if today > utc_now():
        today = utc_now()
    await publish(
        nc,
        topology,
        [
            usage_event(cost="1.00", at=today - timedelta(days=2)),
            usage_event(cost=None, at=today - timedelta(days=1)),
            usage_event(cost=None, at=today - timedelta(days=1)),
            usage_event(cost="1.00", at=today),
            usage_event(cost=None, at=today),
        ],
    )
    await materialize(nc, db, topology)
    trend = await generator.generate_trend_report(days=3, interval="daily")
    shown = [
        (r["cost_usd"], r["requests"], r["change_usd"], r["unpriced_requests"])
        for r in trend.main.records()
    ]
    assert shown == [
        (Decimal("1.00"), 1, None, 0),
        (None, 2, None, 2),  # not $0, nor a drop of $1
        (Decimal("1.00"), 2, None, 1),
    ]
    assert "| unpriced | 2 |" in trend.export(ExportFormat.MARKDOWN)


async def test_summary_shows_the_period_by_model_and_the_budgets(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    now = utc_now()
    policy = BudgetPolicy(policy_id="all", name="All spend", limit_amount=Decimal(10))
    await publish(
        nc,
        topology,
        [PolicySet(occurred_at=now, policy=policy), usage_event(cost="2.50", at=now)],
    )
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_summary_report("monthly")
    assert [(r["model"], r["cost_usd"]) for r in report.main.records()] == [
        ("gpt-4o", Decimal("2.50"))
    ]
    [budget] = report.tables[1].records()
    assert (budget["policy"], budget["spent_usd"], budget["remaining_usd"]) == (
        "All spend",
        Decimal("2.50"),
        Decimal("7.50"),
    )


async def test_a_report_of_a_zone_shows_its_window_in_that_zone(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """Tokyo's month was headed "2026-11-30T15:00:00+00:00 to 2026-12-31T15:00:00+00:00
    (UTC)": the right instants, read as the wrong days (from the 30th to the 31st). Its
    window is now shown from Tokyo's midnights, in every export and over NATS."""
    tokyo = ZoneInfo("Asia/Tokyo")
    await publish(nc, topology, [usage_event(cost="1.00")])
    await materialize(nc, db, topology, "policies")
    for report in (
        await generator.generate_summary_report("monthly", tz="Asia/Tokyo"),
        await generator.generate_trend_report(days=7, tz="Asia/Tokyo"),
        await generator.generate_projection_report(days_to_project=3, tz="Asia/Tokyo"),
    ):
        first = report.start.astimezone(tokyo).date()
        heading = report.to_markdown().splitlines()[2]
        assert heading.startswith(f"{first}T00:00:00+09:00 to "), heading
        assert heading.endswith("T00:00:00+09:00"), heading
        document = json.loads(report.to_json())
        assert document["start"] == f"{first}T00:00:00+09:00"


async def test_a_call_stamped_minutes_ahead_counts_in_the_summary_and_dashboard_month(
    nc: Client,
    db: str,
    topology: Topology,
    generator: ReportGenerator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At 12:13, a call stamped 12:17 by a host whose clock is 4 minutes ahead (within
    max_clock_skew) is this month's: its budget and `budget spend` count it, so the
    summary's table and the dashboard's month must too (they stopped at 12:15)."""
    day = datetime.combine(utc_now().date() - timedelta(days=2), datetime.min.time(), UTC)
    now = day + timedelta(hours=12, minutes=13)
    monkeypatch.setattr("projections.report_queries.utc_now", lambda: now)
    policy = BudgetPolicy(policy_id="all", name="All spend", limit_amount=Decimal(10))
    calls = [
        usage_event(cost="1.00", at=day + timedelta(hours=12)),
        usage_event(cost="2.00", at=now + timedelta(minutes=4)),
    ]
    await publish(nc, topology, [PolicySet(occurred_at=day, policy=policy), *calls])
    await materialize(nc, db, topology, "policies")

    report = await generator.generate_summary_report("monthly")
    [by_model] = report.main.records()
    [budget] = report.tables[1].records()
    assert by_model["cost_usd"] == budget["spent_usd"] == Decimal("3.00")
    async with await connect(db) as conn:
        [spend] = await spend_for_period(conn, Period.MONTHLY, now, "global")
        [month] = (await _month_by_scope(conn, now))["global"]
    assert month.cost == spend.cost == Decimal("3.00")


async def test_a_policy_of_an_empty_key_from_the_log_is_listed_under_that_key(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """Setting one is refused now (``settable_policy``), but such a policy already in the
    log still decodes and applies to no call: its budget is not all spend ("*")."""
    now = utc_now()
    blank = BudgetPolicy(
        policy_id="blank", name="Blank", scope=BudgetScope.USER, scope_key="", limit_amount=1
    )
    await publish(
        nc,
        topology,
        [PolicySet(occurred_at=now, policy=blank), usage_event(cost="2.50", at=now, user="")],
    )
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_summary_report("monthly")
    [budget] = report.tables[1].records()
    assert (budget["key"], budget["spent_usd"]) == ("", Decimal(0))


async def test_a_projection_without_a_whole_day_of_spend_says_why_it_is_empty(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    await publish(nc, topology, [usage_event(cost="7.00", at=utc_now())])
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_projection_report()
    assert report.empty
    assert "a forecast is fitted on whole days" in report.to_markdown()


async def test_a_projection_without_a_whole_day_of_spend_still_shows_the_budgets(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """$7 spent on the first day against a $5 budget: nothing to forecast from, but the
    budget is exhausted today (the table was left out with the forecast)."""
    now = utc_now()
    policy = BudgetPolicy(policy_id="all", name="All spend", limit_amount=Decimal(5))
    await publish(
        nc, topology, [PolicySet(occurred_at=now, policy=policy), usage_event(cost="7.00", at=now)]
    )
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_projection_report()
    assert [t.title for t in report.tables] == [
        "Daily forecast",
        "Per calendar month (each reset starts from zero)",
        "Budgets at this pace",
    ]
    [budget] = report.tables[2].records()
    assert (budget["spent_usd"], budget["exhausted_on"]) == (Decimal("7.00"), now.date())


async def test_a_budget_whose_calls_had_no_price_has_no_amount_spent(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """Unpriced calls are summed as 0 in the buckets: a window of only those is unpriced
    (with its count), never $0 spent and all of its limit remaining."""
    now = utc_now()
    policies = [
        BudgetPolicy(
            policy_id=f"p-{user}",
            name=user,
            scope=BudgetScope.USER,
            scope_key=user,
            period="daily",
            limit_amount=Decimal(10),
        )
        for user in ("unpriced", "mixed")
    ]
    await publish(
        nc,
        topology,
        [
            *(PolicySet(occurred_at=now, policy=p) for p in policies),
            usage_event(cost="2.00", at=now - timedelta(days=1)),  # history to forecast from
            usage_event(cost="1.00", at=now, user="mixed"),
            usage_event(cost=None, at=now, user="mixed"),
            usage_event(cost=None, at=now, user="unpriced"),
        ],
    )
    await materialize(nc, db, topology, "policies")
    summary = await generator.generate_summary_report()
    budgets = {r["policy"]: r for r in summary.tables[1].records()}
    shown = ("spent_usd", "remaining_usd", "used_percent", "unpriced_requests")
    assert [budgets["unpriced"][c] for c in shown] == [None, None, None, 1]
    assert [budgets["mixed"][c] for c in shown] == [
        Decimal("1.00"),
        Decimal("9.00"),
        Decimal("10.0"),
        1,
    ]
    projection = await generator.generate_projection_report()
    at_pace = {r["policy"]: r for r in projection.tables[2].records()}
    assert (at_pace["unpriced"]["spent_usd"], at_pace["unpriced"]["unpriced_requests"]) == (None, 1)
    assert at_pace["mixed"]["spent_usd"] == Decimal("1.00")
    [row] = [r for r in summary.export(ExportFormat.MARKDOWN).splitlines() if "| unpriced |" in r]
    assert [c.strip() for c in row.split("|")[6:10]] == ["unpriced", "10.00", "", ""], row


async def test_projection_forecasts_per_month_and_says_when_a_budget_runs_out(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    now = utc_now()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    policy = BudgetPolicy(policy_id="all", name="All spend", limit_amount=Decimal(1000))
    history = [
        usage_event(cost="10.00", at=today - timedelta(days=d, hours=-12)) for d in range(1, 29)
    ]
    so_far_today = usage_event(cost="7.00", at=now)
    await publish(nc, topology, [PolicySet(occurred_at=now, policy=policy), *history, so_far_today])
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_projection_report(days_to_project=40)
    forecast_days = report.tables[0].records()
    assert len(forecast_days) >= 40
    assert {r["expected_usd"] for r in forecast_days} == {Decimal("10.00")}  # a flat $10/day
    months = report.tables[1].records()
    assert len(months) >= 2  # the current month, then the next ones on their own
    for later in months[1:]:  # whole months, the last one too
        first = later["month"]
        days = ((first + timedelta(days=31)).replace(day=1) - first).days
        assert (later["actual_usd"], later["projected_total_usd"]) == (0, 10 * days)
    [budget] = report.tables[2].records()
    assert budget["policy"] == "All spend"
    # today's $7 is in the spend; today adds only the $3 it may still add, then $10 a day
    month_end = (today.date().replace(day=1) + timedelta(days=31)).replace(day=1)
    after_today = (month_end - today.date()).days - 1
    this_month = sum(Decimal("10.00") for e in history if e.occurred_at >= today.replace(day=1))
    assert budget["spent_usd"] == this_month + 7
    assert budget["projected_at_period_end_usd"] == this_month + 10 + 10 * after_today
    # the month's row agrees: its actual holds today so far too
    assert (months[0]["actual_usd"], months[0]["projected_total_usd"]) == (
        budget["spent_usd"],
        budget["projected_at_period_end_usd"],
    )
    assert any("method: least-squares" in note for note in report.notes)


async def test_a_months_interval_is_its_totals_own_not_its_days_bounds_summed(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """28 days alternating $8 and $12: next month's 95 % interval is the total's (the
    fit's prediction interval of the sum), narrower than the sum of its days' bounds,
    which has every day at its extreme at once."""
    today = utc_now().replace(hour=0, minute=0, second=0, microsecond=0)
    history = [
        usage_event(cost="8.00" if d % 2 else "12.00", at=today - timedelta(days=d, hours=-12))
        for d in range(1, 29)
    ]
    await publish(nc, topology, history)
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_projection_report(days_to_project=70)
    days = report.tables[0].records()
    [month, *_] = report.tables[1].records()[1:]  # the next month: whole, from zero
    in_month = [d for d in days if d["day"].replace(day=1) == month["month"]]
    assert len(in_month) >= 28
    assert month["projected_total_usd"] == sum(d["expected_usd"] for d in in_month)
    own = month["high_usd"] - month["projected_total_usd"]
    summed = sum(d["high_usd"] - d["expected_usd"] for d in in_month)
    assert 0 < own < summed, (own, summed)
    # fitted from the first whole day: the day usage began is left out
    paid = [(e.occurred_at.date(), e.cost or Decimal(0)) for e in reversed(history)][1:]
    _, high = total_interval(paid, [d["day"] for d in in_month], month["projected_total_usd"])
    assert month["high_usd"] == high


async def test_the_forecast_leaves_out_the_part_day_the_first_call_began(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """Usage began at 18:00 three days ago ($6 that evening), then $24 a day: the first
    day is a quarter of one. Fitted as a whole day it read as a trend ($6, $24, $24: +$9 a
    day, $45 tomorrow and $279 the 30th day); from the first whole day it is $24 a day."""
    today = utc_now().replace(hour=0, minute=0, second=0, microsecond=0)
    began = today - timedelta(days=3) + timedelta(hours=18)
    calls = [usage_event(cost="6.00", at=began)]
    calls += [usage_event(cost="24.00", at=today - timedelta(days=d, hours=-12)) for d in (1, 2)]
    await publish(nc, topology, calls)
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_projection_report(days_to_project=30)
    assert {r["expected_usd"] for r in report.main.records()} == {Decimal("24.00")}
    assert "fitted on the 2 days before today" in report.notes


async def test_a_one_off_spike_is_left_out_of_the_forecast_and_the_report_says_so(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """20 days of $10 and, five days ago, one batch job of $1,000: least squares followed
    the spike ($146 tomorrow rising to $465 a day, the month $9,500, a $1,500 budget
    exhausted within days); left out as a one-off, the forecast is $10 a day, the budget
    lasts and a note names the day left out."""
    now = utc_now()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    calls = [
        usage_event(cost="10.00", at=today - timedelta(days=d, hours=-12)) for d in range(1, 21)
    ]
    spike = today - timedelta(days=5, hours=-13)
    calls.append(usage_event(cost="1000.00", at=spike))
    policy = BudgetPolicy(
        policy_id="month", name="Month", period=BudgetPeriod.MONTHLY, limit_amount=Decimal(1500)
    )
    await publish(nc, topology, [PolicySet(occurred_at=now, policy=policy), *calls])
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_projection_report(days_to_project=30)
    assert {r["expected_usd"] for r in report.main.records()} == {Decimal("10.00")}
    [budget] = report.tables[2].records()
    assert budget["exhausted_on"] is None
    assert (
        f"left out of the fit as a one-off spike, far above every other day:"
        f" {spike.date()} ($1,010.00)"
    ) in report.notes
    assert "fitted on the 19 days before today" in report.notes  # less the first one's


async def test_a_forecast_under_a_cent_a_day_is_forecast_and_summed_unrounded(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """Embeddings at $0.004 a day: each day was rounded to cents before the days were
    summed, so tomorrow read $0.00 (as if nothing would be spent) and the month ahead
    added nothing to its actual ($0.12 a month lost; at $0.125 a day, 30 days summed to
    $3.60). The days and the month keep the forecast's own amount, rounded where shown."""
    today = start_of(Period.DAILY)
    calls = [
        usage_event(cost="0.004", at=today - timedelta(days=d, hours=-12)) for d in range(1, 15)
    ]
    await publish(nc, topology, calls)
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_projection_report(days_to_project=30)
    days = report.main.records()
    assert {d["expected_usd"] for d in days} == {Decimal("0.004")}
    [month, *_] = report.tables[1].records()
    left = [d for d in days if d["day"].replace(day=1) == month["month"]]
    assert month["projected_total_usd"] == month["actual_usd"] + Decimal("0.004") * len(left)
    assert "| 0.004 |" in report.to_markdown()
    assert json.loads(report.to_json())["tables"][0]["rows"][0]["expected_usd"] == "0.004"


async def test_a_budgets_projection_is_its_exact_spend_plus_the_forecast(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """$0.125 spent today after days of free calls ($0 a day to come): projected at the
    period's end $0.125, shown as $0.13 as the spend is; rounded to cents half to even
    before it was $0.12, less than its own spend."""
    now = utc_now()
    free = [usage_event(cost="0", at=now - timedelta(days=d)) for d in (1, 2)]
    policy = BudgetPolicy(
        policy_id="day", name="Day", period=BudgetPeriod.DAILY, limit_amount=Decimal(10)
    )
    await publish(
        nc,
        topology,
        [PolicySet(occurred_at=now, policy=policy), *free, usage_event(cost="0.125", at=now)],
    )
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_projection_report(days_to_project=1)
    [budget] = report.tables[2].records()
    assert budget["spent_usd"] == budget["projected_at_period_end_usd"] == Decimal("0.125")
    assert "| 0.13 | 0.13 | 10.00 |  | 0 |" in report.to_markdown()


async def test_one_day_of_history_forecasts_no_interval(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """One day measures no spread: the days and months have no low or high (null, an empty
    cell), never an interval of width 0."""
    yesterday = utc_now().replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1)
    await publish(nc, topology, [usage_event(cost="5.00", at=yesterday)])
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_projection_report(days_to_project=3)
    for table in report.tables[:2]:
        for row in table.records():
            assert (row["low_usd"], row["high_usd"]) == (None, None), row
    assert report.tables[0].records()[1]["expected_usd"] == Decimal("5.00")
    day = json.loads(report.to_json())["tables"][0]["rows"][1]
    assert (day["low_usd"], day["high_usd"]) == (None, None)
    assert "| 5.00 |  |  |" in report.export(ExportFormat.MARKDOWN)
    assert "fitted on the day before today" in report.notes  # not "the 1 days"


async def test_a_budget_at_this_pace_counts_the_days_of_its_policys_zone(
    nc: Client,
    db: str,
    topology: Topology,
    generator: ReportGenerator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A daily $15 budget of Kiritimati (+14: its days run 10:00 to 10:00 UTC), read in a
    UTC report at 11:00 UTC, an hour into its day: $10 a day (each at 05:00 UTC, on the
    same day in both zones) and $1 so far. Its day ends at 10:00 UTC tomorrow, so at this
    pace it ends at $10 and is not exhausted; counted in the report's UTC days, the rest
    of today and all of tomorrow were added to it ($20, exhausted tomorrow)."""
    day = datetime.combine(utc_now().date() - timedelta(days=2), datetime.min.time(), UTC)
    now = day + timedelta(hours=11)
    monkeypatch.setattr("projections.report_queries.utc_now", lambda: now)
    policy = BudgetPolicy(
        policy_id="kiritimati",
        name="Kiritimati day",
        period=BudgetPeriod.DAILY,
        timezone="Pacific/Kiritimati",
        limit_amount=Decimal(15),
    )
    paced = [usage_event(cost="10.00", at=day - timedelta(days=d, hours=-5)) for d in range(29)]
    so_far = usage_event(cost="1.00", at=day + timedelta(hours=10, minutes=30))
    await publish(nc, topology, [PolicySet(occurred_at=now, policy=policy), *paced, so_far])
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_projection_report(days_to_project=5)
    [budget] = report.tables[2].records()
    assert budget["period_end"] == day + timedelta(days=1, hours=10)
    assert budget["spent_usd"] == Decimal("1.00")
    assert budget["projected_at_period_end_usd"] == Decimal("10.00")
    assert budget["exhausted_on"] is None


async def test_a_budget_at_this_pace_is_forecast_to_its_windows_end(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """A custom window of 50 days from today, $10 a day before it: at this pace it ends at
    $500 and runs out ($300) on its 30th day, however few days the report forecasts (it
    stopped at the report's last day: $10 times the days to the month's end, and no
    exhaustion past them)."""
    today = utc_now().replace(hour=0, minute=0, second=0, microsecond=0)
    policy = BudgetPolicy(
        policy_id="fifty-days",
        name="Fifty days",
        period=BudgetPeriod.CUSTOM,
        custom_start=today,
        custom_end=today + timedelta(days=50),
        limit_amount=Decimal(300),
    )
    paced = [usage_event(cost="10.00", at=today - timedelta(days=d, hours=-12)) for d in (1, 2, 3)]
    await publish(nc, topology, [PolicySet(occurred_at=utc_now(), policy=policy), *paced])
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_projection_report(days_to_project=3)
    [budget] = report.tables[2].records()
    assert budget["period_end"] == today + timedelta(days=50)
    assert budget["projected_at_period_end_usd"] == Decimal("500.00")
    assert budget["exhausted_on"] == today.date() + timedelta(days=29)


async def test_a_budget_run_out_days_ago_says_the_day_it_ran_out_not_today(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """$3 and then $4 against $5: the budget ran out two days ago, on the $4 day of its
    window (begun at 18:00 five days ago), and the report said today. A budget of New
    York's days counts them: $4 at 02:00 UTC is the day before's there."""
    today = utc_now().replace(hour=0, minute=0, second=0, microsecond=0)
    window = today - timedelta(days=5, hours=-18), today + timedelta(days=5)
    policies = [
        BudgetPolicy(
            policy_id=f"ten-days-{n}",
            name=f"Ten days {zone}",
            period=BudgetPeriod.CUSTOM,
            custom_start=window[0],
            custom_end=window[1],
            limit_amount=Decimal(5),
            timezone=None if zone == "UTC" else zone,
        )
        for n, zone in enumerate(("UTC", "America/New_York"))
    ]
    calls = [
        usage_event(cost="3.00", at=window[0] + timedelta(hours=1)),
        usage_event(cost="4.00", at=today - timedelta(days=2, hours=-2)),
        usage_event(cost="1.00", at=today),
    ]
    await publish(
        nc, topology, [*(PolicySet(occurred_at=utc_now(), policy=p) for p in policies), *calls]
    )
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_projection_report(days_to_project=3)
    ran_out = {b["policy"]: b["exhausted_on"] for b in report.tables[2].records()}
    assert ran_out == {
        "Ten days UTC": today.date() - timedelta(days=2),
        "Ten days America/New_York": today.date() - timedelta(days=3),
    }


async def test_a_custom_window_ending_mid_day_is_forecast_for_its_part_of_that_day(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """$24 a day, and a custom window from today's midnight to noon the day after
    tomorrow: at this pace it adds $24 today, $24 tomorrow and $12 on its last half day
    ($60). Its last day was forecast whole ($72), beyond the window's end."""
    today = utc_now().replace(hour=0, minute=0, second=0, microsecond=0)
    policy = BudgetPolicy(
        policy_id="to-noon",
        name="To noon",
        period=BudgetPeriod.CUSTOM,
        custom_start=today,
        custom_end=today + timedelta(days=2, hours=12),
        limit_amount=Decimal(1000),
    )
    paced = [
        usage_event(cost="24.00", at=today - timedelta(days=d, hours=-12)) for d in range(1, 5)
    ]
    await publish(nc, topology, [PolicySet(occurred_at=utc_now(), policy=policy), *paced])
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_projection_report(days_to_project=3)
    [budget] = report.tables[2].records()
    assert budget["projected_at_period_end_usd"] == Decimal("60.00")


async def test_exports_are_json_csv_and_markdown(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    at = datetime(2026, 1, 5, 10, tzinfo=UTC)
    await publish(nc, topology, [usage_event(cost="0.125", at=at)])
    await materialize(nc, db, topology)
    report = await generator.generate_report(at - timedelta(hours=1), at + timedelta(hours=1))
    document = json.loads(report.to_json())
    assert document["tables"][0]["rows"][0]["cost_usd"] == "0.125"  # decimal text, exact
    parsed = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert parsed[0]["cost_usd"] == "0.125" and parsed[0]["requests"] == "1"
    markdown = report.to_markdown()
    assert "| cost_usd | requests |" in markdown
    assert "| 0.13 | 1 |" in markdown  # money shown to the cent, half up


async def test_a_model_budget_at_this_pace_counts_its_model_alone_not_a_provider_of_its_name(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """A custom 50-day budget of the model "mistral" (served by ollama, $1 a day before
    it), beside the provider "mistral"'s own model mistral-large ($10 a day): at this pace
    it ends at $50. The model rollups' rows were matched on either key, provider or model,
    so the provider's calls were forecast into the model's budget ($550, exhausted on day
    28)."""
    today = utc_now().replace(hour=0, minute=0, second=0, microsecond=0)
    policy = BudgetPolicy(
        policy_id="mistral-model",
        name="Mistral model",
        scope=BudgetScope.MODEL,
        scope_key="mistral",
        period=BudgetPeriod.CUSTOM,
        custom_start=today,
        custom_end=today + timedelta(days=50),
        limit_amount=Decimal(300),
    )
    days = [today - timedelta(days=d, hours=-12) for d in (1, 2, 3)]
    model = [usage_event(cost="1.00", at=at, provider="ollama", model="mistral") for at in days]
    provider = [
        usage_event(cost="10.00", at=at, provider="mistral", model="mistral-large") for at in days
    ]
    await publish(
        nc, topology, [PolicySet(occurred_at=utc_now(), policy=policy), *model, *provider]
    )
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_projection_report(days_to_project=3)
    [budget] = report.tables[2].records()
    assert budget["projected_at_period_end_usd"] == Decimal("50.00")
    assert budget["exhausted_on"] is None


async def test_a_budget_of_an_empty_key_from_the_log_is_forecast_from_no_call(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """A user budget of the key "" (an old log's: it applies to no call) beside $1 a day
    of calls without a user: it spends nothing and has no day of spend to forecast
    from. It was forecast from the calls of every user (then from those without one),
    $50."""
    today = utc_now().replace(hour=0, minute=0, second=0, microsecond=0)
    blank = BudgetPolicy(
        policy_id="blank",
        name="Blank",
        scope=BudgetScope.USER,
        scope_key="",
        period=BudgetPeriod.CUSTOM,
        custom_start=today,
        custom_end=today + timedelta(days=50),
        limit_amount=Decimal(30),
    )
    anonymous = [
        usage_event(cost="1.00", at=today - timedelta(days=d, hours=-12), user=None)
        for d in (1, 2, 3)
    ]
    await publish(nc, topology, [PolicySet(occurred_at=utc_now(), policy=blank), *anonymous])
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_projection_report(days_to_project=3)
    [budget] = report.tables[2].records()
    assert (budget["spent_usd"], budget["exhausted_on"]) == (Decimal(0), None)
    assert budget["projected_at_period_end_usd"] is None  # nothing of its own to fit


async def test_a_budget_without_a_day_of_its_own_spend_has_no_projection_and_says_why(
    nc: Client, db: str, topology: Topology, generator: ReportGenerator
) -> None:
    """Bob's $20 monthly budget, his first call today ($3), beside alice's $10 a day before
    it: the report forecasts the days from alice's, but bob's budget has nothing of his to
    fit. Its projection at the period's end was his $3 so far, as if he would spend no
    more; it is empty, and a note says why."""
    now = utc_now()
    policy = BudgetPolicy(
        policy_id="bob",
        name="Bob",
        scope=BudgetScope.USER,
        scope_key="bob",
        period=BudgetPeriod.MONTHLY,
        limit_amount=Decimal(20),
    )
    alice = [usage_event(cost="10.00", at=now - timedelta(days=d)) for d in (1, 2, 3)]
    bob = usage_event(cost="3.00", at=now, user="bob")
    await publish(nc, topology, [PolicySet(occurred_at=now, policy=policy), *alice, bob])
    await materialize(nc, db, topology, "policies")
    report = await generator.generate_projection_report(days_to_project=3)
    assert report.main.rows  # the days are forecast, from alice's spend
    [budget] = report.tables[2].records()
    assert (budget["spent_usd"], budget["exhausted_on"]) == (Decimal("3.00"), None)
    assert budget["projected_at_period_end_usd"] is None
    assert any("has no projection at its period's end" in note for note in report.notes)
    assert "| Bob | " in report.to_markdown()
