"""Calendar periods: which day, ISO week (from Monday) and month an instant belongs to."""

from __future__ import annotations

from datetime import date, datetime, timedelta, tzinfo
from enum import StrEnum
from zoneinfo import ZoneInfo

__all__ = [
    "CALENDAR_PERIODS",
    "Period",
    "local_midnight",
    "period_bounds",
    "period_start",
    "quarter_hour_number",
]

UTC = ZoneInfo("UTC")


class Period(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


CALENDAR_PERIODS = (Period.DAILY, Period.WEEKLY, Period.MONTHLY)


def period_start(period: Period, instant: datetime, tz: tzinfo = UTC) -> date:
    """The local calendar date on which the period containing ``instant`` starts."""
    if instant.tzinfo is None:
        raise ValueError("instant must be timezone-aware")
    day = instant.astimezone(tz).date()
    if period is Period.DAILY:
        return day
    if period is Period.WEEKLY:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def period_bounds(period: Period, instant: datetime, tz: tzinfo = UTC) -> tuple[datetime, datetime]:
    """[start, end) of the period containing ``instant``, in UTC.

    Bounds are local midnights of ``tz``, so a day across a DST change is 23 or 25 hours
    long. (They are returned in UTC because Python subtracts two datetimes of one zone by
    wall clock, which would hide exactly that hour.)
    """
    start = period_start(period, instant, tz)
    if period is Period.DAILY:
        end = start + timedelta(days=1)
    elif period is Period.WEEKLY:
        end = start + timedelta(days=7)
    else:
        end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return local_midnight(start, tz), local_midnight(end, tz)


def local_midnight(day: date, tz: tzinfo) -> datetime:
    """When ``day`` starts in ``tz``, in UTC (a midnight that a DST change skips: the
    instant of the change)."""
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def quarter_hour_number(at: datetime) -> int:
    """The quarter hour (of ``at``'s clock) holding ``at``, as one number: what is kept
    per quarter hour (an estimate's price: some change on the half hour) is keyed by it."""
    return at.toordinal() * 96 + at.hour * 4 + at.minute // 15
