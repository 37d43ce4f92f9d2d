"""``ReportGenerator``'s arguments as the seed's callers write them: a group named alone is
that group, and a wrong time is one line naming the argument and how to fix it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta

import pytest

from budget.reports import ReportGenerator
from events.queries import ReportQuery


class Sent(Exception):
    """What the generator would ask the query service (the test stops there)."""

    def __init__(self, query: ReportQuery) -> None:
        self.query = query


class Recording:
    async def report(self, query: ReportQuery) -> None:
        raise Sent(query)


generator = ReportGenerator(Recording())  # type: ignore[arg-type]
END = datetime(2026, 12, 1, tzinfo=UTC)
START = END - timedelta(days=30)


async def test_a_group_named_alone_is_that_group() -> None:
    """Not its letters, which the query service refused as 'cannot group by d, e, l, m, o'."""
    with pytest.raises(Sent) as custom:
        await generator.generate_report(START, END, group_by="model")
    assert custom.value.query.group_by == ["model"]
    with pytest.raises(Sent) as compared:
        await generator.generate_comparison_report(
            START, END, START - timedelta(days=30), START, group_by="user"
        )
    assert compared.value.query.group_by == ["user"]


async def test_a_date_is_its_midnight_utc() -> None:
    """The seed's ``generate_report(start_date, end_date)``: a date was refused as having
    no time zone; a day of the rollups, as the CLI's ``--start 2026-11-01``, is meant."""
    with pytest.raises(Sent) as custom:
        await generator.generate_report(date(2026, 11, 1), date(2026, 12, 1))
    assert (custom.value.query.start, custom.value.query.end) == (START, END)
    with pytest.raises(Sent) as compared:
        await generator.generate_comparison_report(
            date(2026, 11, 1), END, date(2026, 10, 2), date(2026, 11, 1)
        )
    assert compared.value.query.previous_start == START - timedelta(days=30)
    with pytest.raises(Sent) as history:
        await generator.get_usage_history(START, date(2026, 12, 1))
    assert history.value.query.end == END


async def test_no_grouping_given_as_none_is_the_default() -> None:
    """``group_by=None`` raised TypeError ('NoneType' object is not iterable)."""
    with pytest.raises(Sent) as custom:
        await generator.generate_report(START, END, group_by=None)
    assert custom.value.query.group_by == []
    with pytest.raises(Sent) as compared:
        await generator.generate_comparison_report(START, END, START - (END - START), START, None)
    assert compared.value.query.group_by == ["model"]


@pytest.mark.parametrize("naive", [datetime(2026, 11, 1), "2026-11-01"])
async def test_a_time_without_a_zone_is_named_as_the_argument(naive: object) -> None:
    with pytest.raises(ValueError, match=r"^start_date: Input should have timezone info \(a") as e:
        await generator.generate_report(naive, END)  # type: ignore[arg-type]
    assert "\n" not in str(e.value) and "tzinfo=UTC" in str(e.value)
    with pytest.raises(ValueError, match=r"^previous_end: Input should have timezone info"):
        await generator.generate_comparison_report(START, END, START, naive)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^end_date: Input should have timezone info"):
        await generator.get_usage_history(START, naive)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ask", "said"),
    [
        (
            lambda: generator.generate_summary_report("quarterly"),
            "period: Input should be 'daily', 'weekly' or 'monthly'",
        ),
        (
            lambda: generator.generate_trend_report(days=5000),
            "days: Input should be less than or equal to 3660",
        ),
        (
            lambda: generator.generate_projection_report(days_to_project=5000),
            "days_to_project: Input should be less than or equal to 3660",
        ),
    ],
)
async def test_a_period_or_a_count_of_days_out_of_range_is_one_line_naming_it(
    ask: Callable[[], Awaitable[object]], said: str
) -> None:
    """They were 'quarterly' is not a valid Period' (no word of the valid ones), and
    pydantic's error of several lines with a link for 5,000 days."""
    with pytest.raises(ValueError) as refused:
        await ask()
    assert str(refused.value) == said
