"""The forecast on synthetic series: a linear trend with weekly seasonality and noise is
forecast within 10 % over 7 days; a flat series gives a flat forecast."""

from __future__ import annotations

import random
from datetime import date, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from budget.forecast import forecast

START = date(2026, 1, 5)  # a Monday
WEEKLY = (1.0, 1.1, 1.05, 1.0, 0.95, 0.5, 0.4)


def truth(day: int) -> float:
    return (20 + 0.5 * day) * WEEKLY[day % 7]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.floats(0.0, 0.05), st.integers(28, 90))
def test_trend_with_weekly_seasonality_is_forecast_within_10_percent(
    seed: int, noise: float, days: int
) -> None:
    rng = random.Random(seed)
    history = [
        (START + timedelta(days=d), Decimal(str(round(truth(d) * rng.gauss(1, noise), 2))))
        for d in range(days)
    ]
    ahead = forecast(history, 7)
    expected = sum(truth(days + d) for d in range(7))
    predicted = float(sum(f.expected for f in ahead))
    assert abs(predicted - expected) <= 0.10 * expected
    assert all(f.low <= f.expected <= f.high for f in ahead)


@given(st.decimals(min_value=0, max_value=1000, places=2), st.integers(1, 60))
def test_a_flat_series_gives_a_flat_forecast(level: Decimal, days: int) -> None:
    history = [(START + timedelta(days=d), level) for d in range(days)]
    ahead = forecast(history, 10)
    assert [f.expected for f in ahead] == [level] * 10
    assert [f.day for f in ahead] == [START + timedelta(days=days + d) for d in range(10)]


def test_no_history_no_forecast() -> None:
    assert forecast([], 5) == []
