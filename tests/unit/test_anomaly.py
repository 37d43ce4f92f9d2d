"""The hourly anomaly test on synthetic series: daily and weekly seasonality with noise of
up to 20 % raise nothing over 30 days; a 5x spike is flagged within its hour."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from budget.alerting import anomaly

DAYS = 30
START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday


def usual(day: int, hour: int) -> float:
    """Busy working hours, quiet nights, half as much at weekends."""
    level = 2.0 if 8 <= hour < 19 else 0.3
    return level * (0.5 if day % 7 in (5, 6) else 1.0)


def series(seed: int, noise: float) -> list[list[Decimal]]:
    """Each hour its usual spend, off by up to ``noise`` either way. (Bounded: a Gaussian
    draw 3 sigma out, which 720 hours give now and then, is an anomaly, not noise.)"""
    rng = random.Random(seed)
    return [
        [Decimal(str(round(usual(d, h) * rng.uniform(1 - noise, 1 + noise), 4))) for h in range(24)]
        for d in range(DAYS)
    ]


def limits_for(days: list[list[Decimal]], day: int, hour: int) -> tuple[Decimal, Decimal] | None:
    history = [days[day - back][hour] for back in range(1, min(day, 28) + 1)]
    weekday = [days[day - back][hour] for back in range(7, min(day, 28) + 1, 7)]
    found = anomaly(history, weekday)
    return (found.baseline, found.threshold) if found else None


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.floats(0.0, 0.2))
def test_thirty_steady_days_with_noise_raise_no_anomaly(seed: int, noise: float) -> None:
    days = series(seed, noise)
    for day in range(DAYS):
        for hour in range(24):
            found = limits_for(days, day, hour)
            if found is not None:
                assert days[day][hour] < found[1], (day, hour, days[day][hour], found)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.floats(0.0, 0.2), st.integers(7, DAYS - 1), st.integers(0, 23))
def test_a_fivefold_hour_is_flagged_within_that_hour(
    seed: int, noise: float, day: int, hour: int
) -> None:
    days = series(seed, noise)
    found = limits_for(days, day, hour)
    assert found is not None
    baseline, threshold = found
    spike = max(baseline * 5, Decimal("0.25"))  # a spike worth noticing, even at night
    # the hour's spend, arriving evenly, reaches the threshold within the hour (where in
    # the hour is the evaluator's SQL: tests/integration/test_alerts.py)
    assert spike >= threshold


def test_no_baseline_before_a_week_of_history() -> None:
    assert anomaly([Decimal(1)] * 6, []) is None
