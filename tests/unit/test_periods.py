"""Calendar period boundaries, property-tested: an instant belongs to exactly the day, ISO
week (from Monday) and month that contain it, in UTC or a named time zone."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from budget.periods import Period, period_bounds, period_start

instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
zones = st.sampled_from([UTC, ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")])


@given(instants, st.sampled_from(list(Period)), zones)
def test_instant_lies_inside_its_period(instant: datetime, period: Period, tz: ZoneInfo) -> None:
    start, end = period_bounds(period, instant, tz)
    assert start <= instant < end


@given(instants, zones)
def test_weeks_start_on_monday_and_months_on_the_first(instant: datetime, tz: ZoneInfo) -> None:
    assert period_start(Period.WEEKLY, instant, tz).weekday() == 0
    assert period_start(Period.MONTHLY, instant, tz).day == 1


@given(instants)
def test_periods_nest(instant: datetime) -> None:
    day = period_start(Period.DAILY, instant)
    assert (
        period_start(Period.WEEKLY, instant)
        <= day
        < period_start(Period.WEEKLY, instant) + timedelta(days=7)
    )
    assert period_start(Period.MONTHLY, instant) == day.replace(day=1)


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 1, 1)))
def test_one_microsecond_before_midnight_is_the_previous_day(day: date) -> None:
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    assert period_start(Period.DAILY, midnight) == day
    assert period_start(Period.DAILY, midnight - timedelta(microseconds=1)) == day - timedelta(1)


def test_a_day_across_a_dst_change_is_23_hours_long() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start, end = period_bounds(Period.DAILY, datetime(2026, 3, 29, 12, tzinfo=berlin), berlin)
    assert end - start == timedelta(hours=23)
