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
    rows = [
        [_cell(value, column, table.unpriced(record, column)) for column, value in record.items()]
        for record in table.records()
    ]
    return {"title": table.title, "headers": headers, "rows": rows}


def _cell(value: Cell, column: str, unpriced: bool) -> tuple[str, Cell]:
    if unpriced:  # an amount of calls none of which had a price: not $0
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
