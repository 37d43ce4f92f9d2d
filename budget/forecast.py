"""Forecasting daily spend: a least-squares linear trend with day-of-week seasonality.

    y(t) = a + b*t + c[weekday(t)]        (c[Monday] = 0; six weekday offsets)

fitted by ordinary least squares on the daily totals (at least 14 days; with fewer, the
weekday terms are dropped, and with fewer than 3 days the forecast is the mean). The 95 %
intervals are the fit's prediction intervals: of a day x, +- t s sqrt(1 + x'(X'X)^-1 x);
of a total over days whose rows sum to g (``total_interval``), +- t s sqrt(k + g'(X'X)^-1 g),
k the days, s the residuals' standard deviation and t Student's 97.5 % quantile for its
degrees of freedom (12.7 for one: two or three days of history say little). So an interval
widens with the distance from the history, and a month's is the total's own, not the sum of
its days' bounds (every day at its extreme at once). A fit with no residual left (one day of
history) has no interval. A one-off spike (``one_off_spikes``) is left out of the fit's
coefficients, not of its spread.
Spend is never forecast below zero. Forecasts are estimates, computed in floating point,
kept to a millionth of a dollar (so days under a cent add up) and rounded where shown.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import NamedTuple

__all__ = [
    "METHOD",
    "DayForecast",
    "forecast",
    "one_off_spikes",
    "part_of_day",
    "total_interval",
]

METHOD = (
    "least-squares linear trend with day-of-week seasonality over the daily totals;"
    " 95% prediction intervals (Student's t) from the residual spread"
)
_SEASONAL_MIN_DAYS = 14
_TREND_MIN_DAYS = 3
_SPIKE_MIN_DAYS = _SEASONAL_MIN_DAYS
"""Fewer days have no weekday terms in the fit: a weekly job's day would be a one-off."""
_SPIKE_SPREADS = 3.5
"""How far above the fit a one-off lies, in robust standard deviations (1.4826 MAD)."""
_SPIKE_MEDIANS_ABOVE = 2
"""A one-off is also this many median days above the fit: so sporadic use (most days
without spend), ordinary noise and a fit that misses by float noise never are."""
_CENT = Decimal("0.01")
_PLACES = 6
"""A forecast's decimal places: float noise beyond them is no spend."""
# Student's t, 97.5 % quantile, for 1 to 30 degrees of freedom; beyond, its expansion.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class DayForecast:
    day: date
    expected: Decimal
    low: Decimal | None
    """None, as ``high``, when the history leaves no spread to measure (one day)."""
    high: Decimal | None


class _Fit(NamedTuple):
    features: Callable[[date], list[float]]
    coef: list[float]
    inverse: list[list[float]]
    """(X'X)^-1: a prediction's variance is s^2 times its row's quadratic form in it."""
    spread: float | None
    """t times s; None when no residual is free (as many days as parameters)."""


def forecast(history: Sequence[tuple[date, Decimal]], days: int) -> list[DayForecast]:
    """Forecast the ``days`` days after the last day of ``history`` (consecutive days,
    oldest first)."""
    if not history:
        return []
    fit = _fit(history)
    last = history[-1][0]
    result = []
    for step in range(1, days + 1):
        day = last + timedelta(days=step)
        row = fit.features(day)
        expected = max(_dot(fit.coef, row), 0.0)
        half = _half_width(fit, 1, row)
        result.append(
            DayForecast(
                day=day,
                expected=_money(expected),
                low=None if half is None else _money(max(expected - half, 0.0)),
                high=None if half is None else _money(expected + half),
            )
        )
    return result


def part_of_day(day: DayForecast, share: float) -> Decimal:
    """``day``'s expected spend in ``share`` (0 to 1) of it, kept as forecasts are."""
    return _money(float(day.expected) * share)


def total_interval(
    history: Sequence[tuple[date, Decimal]], days: Sequence[date], expected: Decimal
) -> tuple[Decimal | None, Decimal | None]:
    """The 95 % interval of ``expected``, the forecast spend of ``days`` (after
    ``history``); (None, None) without a spread to measure."""
    if not history or not days:
        return None, None
    fit = _fit(history)
    rows = [fit.features(day) for day in days]
    half = _half_width(fit, len(days), [sum(column) for column in zip(*rows, strict=True)])
    if half is None:
        return None, None
    width = _money(half)
    return max(expected - width, Decimal(0)), expected + width


def _half_width(fit: _Fit, days: int, row: list[float]) -> float | None:
    if fit.spread is None:
        return None
    form = _dot(row, [_dot(column, row) for column in fit.inverse])
    return fit.spread * math.sqrt(days + max(form, 0.0))


def one_off_spikes(history: Sequence[tuple[date, Decimal]]) -> list[date]:
    """The day of ``history`` the fit leaves out as a one-off spike, if any: the one day
    far above a fit of every day, by 3.5 robust standard deviations of its residuals and
    by twice the median day. Least squares would follow it: one $1,000 day among $10 ones
    read as a steep trend (a month of $9,500). Two such days or more are bursts, how this
    usage goes, and kept; the last day is never one (whether it starts a new level is
    not yet known), nor the first, nor any in less than 14 days of history (where a
    weekly job's day would be)."""
    if len(history) < _SPIKE_MIN_DAYS:
        return []
    fit = _least_squares(history)
    ys = [float(v) for _, v in history]
    residuals = [y - _dot(fit.coef, fit.features(d)) for (d, _), y in zip(history, ys, strict=True)]
    centre = statistics.median(residuals)
    spread = 1.4826 * statistics.median([abs(r - centre) for r in residuals])
    typical = statistics.median(ys)
    high = [
        r > centre + _SPIKE_SPREADS * spread and r > _SPIKE_MEDIANS_ABOVE * typical > 0
        for r in residuals
    ]
    if high.count(True) != 1:  # days like it again are how this usage goes: bursts
        return []
    i = high.index(True)
    return [history[i][0]] if 0 < i < len(history) - 1 else []


def _fit(history: Sequence[tuple[date, Decimal]]) -> _Fit:
    return _least_squares(history, frozenset(one_off_spikes(history)))


def _least_squares(
    history: Sequence[tuple[date, Decimal]], left_out: frozenset[date] = frozenset()
) -> _Fit:
    """The fit of ``history``'s days but ``left_out``, whose spread counts every day: a
    one-off spike moves no coefficient, but the intervals allow for another."""
    first = history[0][0]
    n = len(history)
    seasonal = n >= _SEASONAL_MIN_DAYS

    def features(day: date) -> list[float]:
        t = float((day - first).days)
        row = [1.0, t] if n >= _TREND_MIN_DAYS else [1.0]
        if seasonal:
            row += [1.0 if day.weekday() == w else 0.0 for w in range(1, 7)]
        return row

    xs = [features(d) for d, _ in history]
    ys = [float(v) for _, v in history]
    fitted = [(x, y) for x, y, (d, _) in zip(xs, ys, history, strict=True) if d not in left_out]
    k = len(xs[0])
    normal = [[sum(x[i] * x[j] for x, _ in fitted) for j in range(k)] for i in range(k)]
    coef = _solve(normal, [sum(x[i] * y for x, y in fitted) for i in range(k)])
    residuals = [y - _dot(coef, x) for x, y in zip(xs, ys, strict=True)]
    free = n - k
    spread = None
    if free > 0:
        spread = _t975(free) * math.sqrt(sum(r * r for r in residuals) / free)
    unit = [[float(i == j) for j in range(k)] for i in range(k)]
    inverse = [_solve(normal, column) for column in unit]  # symmetric: columns are rows
    return _Fit(features, coef, inverse, spread)


def _t975(dof: int) -> float:
    if dof <= len(_T975):
        return _T975[dof - 1]
    z = 1.959964  # Cornish-Fisher: within 0.001 of the quantile from 30 degrees on
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float]:
    """Solve ``matrix`` v = ``vector`` (symmetric, as X'X) by Gaussian elimination with
    pivoting; a column that carries no information (say, a weekday absent from the
    history) gets 0."""
    k = len(vector)
    a = [list(row) for row in matrix]
    b = list(vector)
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
    """The forecast to a millionth of a dollar (at least to the cent): rounded to cents,
    $0.004 a day was $0.00, and a month summed of such days lost what they add up to."""
    exact = Decimal(repr(round(value, _PLACES)))
    cents = exact.quantize(_CENT)
    return cents if cents == exact else exact
