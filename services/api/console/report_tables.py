"""A report's tables as the reports page shows them: readable headers, numbers aligned
right, and each cell tagged with how to show it (``macros.html``'s ``cell``)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from budget.report_format import Cell, Table

__all__ = ["shown_table"]


def shown_table(table: Table) -> dict[str, Any]:
    """Headers (numbers right-aligned) and each cell with how to show it."""
    numeric = [
        any(isinstance(row[i], int | Decimal) for row in table.rows)
        for i in range(len(table.columns))
    ]
    headers = [
        (c.replace("_usd", " (USD)").replace("_", " ").capitalize(), "num" if n else "")
        for c, n in zip(table.columns, numeric, strict=True)
    ]
    rows = []
    for row in table.rows:
        record = dict(zip(table.columns, row, strict=True))
        # A group whose every call is unpriced has no cost: show that, not $0.
        unpriced = bool(record.get("requests")) and record.get("unpriced_requests") == record.get(
            "requests"
        )
        rows.append([_cell(value, column, unpriced) for column, value in record.items()])
    return {"title": table.title, "headers": headers, "rows": rows}


def _cell(value: Cell, column: str, unpriced: bool) -> tuple[str, Cell]:
    if column == "cost_usd" and unpriced:
        return "unpriced", None
    if value is None:
        return "none", None
    if column.endswith("_usd"):
        return "money", value
    if column.endswith("_percent"):
        return "percent", value
    if isinstance(value, datetime):
        return "instant", value
    if isinstance(value, int | Decimal):
        return "number", value
    return "text", value
