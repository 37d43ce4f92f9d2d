"""Calendar period boundaries, property-tested: an instant belongs to exactly the day, ISO
week (from Monday) and month that contain it, in UTC or a named time zone; in every zone
of the database the periods tile time (each one starts where the one before it ends) and
their UTC bounds rise with the instant, across DST changes at midnight (Havana,
Santiago), half-hour ones (Lord Howe) and days a zone skipped (Apia's 2011-12-30)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from budget.periods import Period, period_bounds, period_start
from events.policy import iana_zones

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


every_zone = st.sampled_from(sorted(iana_zones())).map(ZoneInfo)
since_1980 = st.datetimes(
    min_value=datetime(1980, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
_MICRO = timedelta(microseconds=1)


@settings(max_examples=500)
@given(since_1980, st.sampled_from(list(Period)), every_zone)
def test_in_every_zone_periods_tile_time_on_quarter_hours(
    instant: datetime, period: Period, tz: ZoneInfo
) -> None:
    start, end = period_bounds(period, instant, tz)
    assert start <= instant < end
    assert period_bounds(period, end, tz)[0] == end  # the next one starts where it ends
    assert period_bounds(period, start - _MICRO, tz)[1] == start  # the one before ends there
    for bound in (start, end):  # what the quarter-hour buckets and rollups can sum exactly
        assert (
            bound.utcoffset() == timedelta(0)
            and bound.minute % 15 == bound.second == bound.microsecond == 0
        )


@settings(max_examples=500)
@given(since_1980, since_1980, st.sampled_from(list(Period)), every_zone)
def test_in_every_zone_later_instants_have_later_or_equal_bounds(
    a: datetime, b: datetime, period: Period, tz: ZoneInfo
) -> None:
    a, b = sorted((a, b))
    bounds_a, bounds_b = period_bounds(period, a, tz), period_bounds(period, b, tz)
    assert bounds_a <= bounds_b
    assert (bounds_a == bounds_b) == (period_start(period, a, tz) == period_start(period, b, tz))


@given(
    st.sampled_from(
        [
            ("America/Havana", datetime(2026, 3, 8, 12, tzinfo=UTC)),  # midnight skipped
            ("America/Santiago", datetime(2026, 9, 6, 12, tzinfo=UTC)),  # likewise
            ("America/Havana", datetime(2026, 11, 1, 12, tzinfo=UTC)),  # midnight twice
            ("America/Santiago", datetime(2026, 4, 4, 15, tzinfo=UTC)),  # 23:00 twice
            ("Australia/Lord_Howe", datetime(2026, 4, 5, 12, tzinfo=UTC)),  # half an hour back
            ("Australia/Lord_Howe", datetime(2026, 10, 4, 12, tzinfo=UTC)),  # and forward
        ]
    )
)
def test_a_day_across_a_dst_change_lasts_from_midnight_to_midnight(
    case: tuple[str, datetime],
) -> None:
    name, instant = case
    tz = ZoneInfo(name)
    start, end = period_bounds(Period.DAILY, instant, tz)
    day = instant.astimezone(tz).date()
    assert (start - _MICRO).astimezone(tz).date() < day == start.astimezone(tz).date()
    assert (end - _MICRO).astimezone(tz).date() == day < end.astimezone(tz).date()
    assert end - start != timedelta(days=1)
