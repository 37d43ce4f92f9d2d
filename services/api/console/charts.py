"""Chart data for static/charts.js, built from reports: labels and named series, which a
page embeds as JSON (``<script type="application/json">``, so no inline script runs).

Series styles: ``bar`` and ``line`` are plain; ``forecast`` is a dashed line; ``low`` and
``high`` bound a shaded interval.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from budget.report_format import Cell, Report, Table

__all__ = ["Chart", "report_chart", "spend_chart"]

Chart = dict[str, Any]
MAX_POINTS = 40
"""Bars a report's chart shows: its biggest rows (the table lists them all)."""
_NOT_PLOTTED = frozenset({"change_usd", "remaining_usd"})
_BAND = {"low_usd": "low", "high_usd": "high", "expected_usd": "forecast"}


def _number(cell: Cell) -> float | None:
    # Chart positions only: the tables beside the charts show exact amounts.
    return float(cell) if isinstance(cell, Decimal | int) else None


def _label(cell: Cell) -> str:
    if isinstance(cell, datetime):
        return cell.date().isoformat()
    if isinstance(cell, date):
        return cell.isoformat()
    return "(none)" if cell is None else str(cell)


def spend_chart(trend: Report, projection: Report) -> Chart:
    """Daily spend (bars) and, from today, the forecast with its 95 % interval."""
    days: dict[str, dict[str, float | None]] = {}
    for row in trend.main.records():
        days.setdefault(_label(row["period_start"]), {})["actual"] = _number(row["cost_usd"])
    for row in projection.main.records():
        point = days.setdefault(_label(row["day"]), {})
        for column, name in _BAND.items():
            point[name] = _number(row[column])
    labels = sorted(days)
    styles = (("actual", "Spend", "bar"), ("forecast", "Forecast", "forecast"))
    series = [
        {"label": label, "style": style, "values": [days[d].get(name) for d in labels]}
        for name, label, style in styles
    ]
    series += [
        {"label": label, "style": name, "values": [days[d].get(name) for d in labels]}
        for name, label in (("low", "95% low"), ("high", "95% high"))
    ]
    return {"kind": "bar", "labels": labels, "series": series}


def report_chart(report: Report) -> Chart | None:
    """The main table's money columns against its key columns; None when nothing to plot."""
    table = report.main
    if not table.rows:
        return None
    keys = [i for i in range(len(table.columns)) if not _is_measure(table, i)]
    money = [i for i, c in enumerate(table.columns) if c.endswith("_usd") and c not in _NOT_PLOTTED]
    if not keys or not money:
        return None
    timeline = isinstance(table.rows[0][keys[0]], date | datetime)
    rows = table.rows if timeline else table.rows[:MAX_POINTS]
    series = []
    for i in money:
        column = table.columns[i]
        style = _BAND.get(column, "line" if timeline else "bar")
        label = column.removesuffix("_usd").replace("_", " ").capitalize()
        series.append({"label": label, "style": style, "values": [_number(r[i]) for r in rows]})
    # The last key names a row (a model names its provider too): short labels fit.
    labels = [_label(r[keys[-1]]) for r in rows]
    return {"kind": "line" if timeline else "bar", "labels": labels, "series": series}


def _is_measure(table: Table, index: int) -> bool:
    # by name too: a money column may hold no amount at all (every group unpriced)
    money = table.columns[index].endswith(("_usd", "_percent"))
    return money or any(isinstance(row[index], Decimal | int) for row in table.rows)
