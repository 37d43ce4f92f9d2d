"""Forecasting daily spend: a least-squares linear trend with day-of-week seasonality.

    y(t) = a + b*t + c[weekday(t)]        (c[Monday] = 0; six weekday offsets)

fitted by ordinary least squares on the daily totals (at least 14 days; with fewer, the
weekday terms are dropped, and with fewer than 3 days the forecast is the mean). The 95 %
interval of a day is the point forecast +- 1.96 standard deviations of the fit's
residuals, widened by sqrt(1 + 1/n); spend is never forecast below zero. Forecasts are
estimates, computed in floating point and rounded to cents when shown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

__all__ = ["METHOD", "DayForecast", "forecast"]

METHOD = (
    "least-squares linear trend with day-of-week seasonality over the daily totals;"
    " 95% interval from the residual spread"
)
_SEASONAL_MIN_DAYS = 14
_TREND_MIN_DAYS = 3
_CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class DayForecast:
    day: date
    expected: Decimal
    low: Decimal
    high: Decimal


def forecast(history: Sequence[tuple[date, Decimal]], days: int) -> list[DayForecast]:
    """Forecast the ``days`` days after the last day of ``history`` (consecutive days,
    oldest first)."""
    if not history:
        return []
    first = history[0][0]
    ys = [float(v) for _, v in history]
    n = len(ys)
    seasonal = n >= _SEASONAL_MIN_DAYS

    def features(day: date) -> list[float]:
        t = float((day - first).days)
        row = [1.0, t] if n >= _TREND_MIN_DAYS else [1.0]
        if seasonal:
            row += [1.0 if day.weekday() == w else 0.0 for w in range(1, 7)]
        return row

    xs = [features(d) for d, _ in history]
    coef = _least_squares(xs, ys)
    residuals = [y - _dot(coef, x) for x, y in zip(xs, ys, strict=True)]
    dof = max(n - len(coef), 1)
    sigma = math.sqrt(sum(r * r for r in residuals) / dof) * math.sqrt(1 + 1 / n)
    last = history[-1][0]
    result = []
    for step in range(1, days + 1):
        day = last + timedelta(days=step)
        expected = max(_dot(coef, features(day)), 0.0)
        result.append(
            DayForecast(
                day=day,
                expected=_money(expected),
                low=_money(max(expected - 1.96 * sigma, 0.0)),
                high=_money(expected + 1.96 * sigma),
            )
        )
    return result


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _least_squares(xs: list[list[float]], ys: list[float]) -> list[float]:
    """Solve the normal equations (X'X) b = X'y by Gaussian elimination with pivoting; a
    column that carries no information (say, a weekday absent from the history) gets 0."""
    k = len(xs[0])
    a = [[sum(x[i] * x[j] for x in xs) for j in range(k)] for i in range(k)]
    b = [sum(x[i] * y for x, y in zip(xs, ys, strict=True)) for i in range(k)]
    for col in range(k):
        pivot = max(range(col, k), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-12:
            continue
        a[col], a[pivot] = a[pivot], a[col]
        b[col], b[pivot] = b[pivot], b[col]
        for row in range(k):
            if row != col and a[row][col]:
                factor = a[row][col] / a[col][col]
                a[row] = [v - factor * p for v, p in zip(a[row], a[col], strict=True)]
                b[row] -= factor * b[col]
    return [b[i] / a[i][i] if abs(a[i][i]) >= 1e-12 else 0.0 for i in range(k)]


def _money(value: float) -> Decimal:
    return Decimal(repr(value)).quantize(_CENT)
