"""A report: titled tables of rows, exported as JSON, CSV or Markdown.

Money stays ``Decimal`` in the report; exports show it as decimal text (JSON strings, so
no float rounding sneaks in), rounded to cents in Markdown only. An amount of calls none
of which had a price is no amount: JSON null, an empty CSV cell, "unpriced" in Markdown
(``Table.unpriced``), never 0.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, localcontext
from enum import StrEnum
from typing import Any

from budget.one_line import one_line
from events.queries import TAG_GROUP, CellKind, ReportAnswer, ReportTable

__all__ = [
    "ExportFormat",
    "Report",
    "Table",
    "from_answer",
    "history_cut_note",
    "shown_money",
    "to_answer",
]

Cell = str | int | Decimal | date | datetime | None

_UNPRICED_MARKS = {
    "cost_usd": ("unpriced_requests", "unpriced_reason"),
    "actual_usd": ("unpriced_requests",),
    "spent_usd": ("unpriced_requests",),
    "current_usd": ("current_unpriced_requests",),
    "previous_usd": ("previous_unpriced_requests",),
}
"""Money columns that leave unpriced calls out, each with the columns of its row that say
a call lacked a price (a count of them, or one call's reason): an amount that is None
where one of them is set is of unpriced calls only."""


class ExportFormat(StrEnum):
    JSON = "json"
    CSV = "csv"
    MARKDOWN = "md"


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[Cell, ...]] = field(default_factory=list)

    def records(self) -> list[dict[str, Cell]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    @staticmethod
    def unpriced(record: dict[str, Cell], column: str) -> bool:
        """Whether ``column`` of ``record`` (a row of ``records``) is an amount of calls
        none of which had a price."""
        marks = _UNPRICED_MARKS.get(column, ())
        return record[column] is None and any(record.get(mark) for mark in marks)


@dataclass(frozen=True)
class Report:
    title: str
    start: datetime
    end: datetime
    tables: list[Table]
    notes: list[str] = field(default_factory=list)

    @property
    def main(self) -> Table:
        return self.tables[0]

    @property
    def empty(self) -> bool:
        return not any(t.rows for t in self.tables)

    def export(self, fmt: ExportFormat) -> str:
        return {
            ExportFormat.JSON: self.to_json,
            ExportFormat.CSV: self.to_csv,
            ExportFormat.MARKDOWN: self.to_markdown,
        }[fmt]()

    def to_json(self) -> str:
        document = {
            "title": self.title,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "tables": [
                {"title": t.title, "columns": list(t.columns), "rows": t.records()}
                for t in self.tables
            ],
            "notes": self.notes,
        }
        return json.dumps(document, default=_text, indent=2) + "\n"

    def to_csv(self) -> str:
        """Each table as a CSV block (header row first), blocks separated by a blank line.
        Lines end in CRLF (RFC 4180): the writer then quotes a lone CR inside a cell too."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        for i, table in enumerate(self.tables):
            if i:
                out.write("\r\n")
            writer.writerow(table.columns)
            writer.writerows([_csv_cell(c) for c in row] for row in table.rows)
        return out.getvalue()

    def to_markdown(self) -> str:
        # The notes and titles are escaped as the cells are: a history's note repeats its
        # filter (a host's user id, as typed in a shared link), a title a tag's name.
        # Each end with its offset: a report of a zone's days is shown from its midnights.
        lines = [f"# {_markdown_line(self.title)}", ""]
        lines += [f"{_text(self.start)} to {_text(self.end)}", ""]
        for table in self.tables:
            lines += [f"## {_markdown_line(table.title)}", ""]
            if not table.rows:
                lines += ["(no data)", ""]
                continue
            lines.append(_markdown_row(map(_shown_column, table.columns)))
            lines.append(_markdown_row("---" for _ in table.columns))
            lines += [
                _markdown_row(
                    "unpriced" if table.unpriced(r, c) else _shown(c, v) for c, v in r.items()
                )
                for r in table.records()
            ]
            lines.append("")
        lines += [f"- {_markdown_line(note)}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"


def history_cut_note(limit: int) -> str:
    """The note of a usage history that more calls match than its ``limit``."""
    return (
        f"more than {limit} calls match: showing the first {limit}; narrow the window or"
        " the filters, or raise the limit"
    )


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        # plain decimal text: str() writes a small cost, a zero of many places or a limit
        # typed so with an exponent (1.0E-7, 0E-8, 1E+2)
        return f"{value:f}"
    return str(value)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A text cell starting so is run as a formula by spreadsheets (CSV injection, OWASP)."""


def _csv_cell(value: object) -> str:
    """Text that a spreadsheet would run as a formula gets a leading ``'``; numbers,
    negative ones included, stay numbers."""
    text = _text(value)
    return "'" + text if isinstance(value, str) and text.startswith(FORMULA_STARTS) else text


def shown_money(value: Decimal) -> str:
    """Money as reports show it: to the cent, half up; a sub-cent amount in full."""
    if value and abs(value) < Decimal("0.01"):
        return f"{value:f}"  # every digit: 0.0000001 is not 0.000000
    # Enough digits for any amount: the default 28 cannot quantize 1E+30 to cents.
    with localcontext(prec=max(28, value.adjusted() + 4)):
        return f"{value.quantize(Decimal('0.01'), ROUND_HALF_UP):,}"


_KEY_COLUMNS = frozenset(("provider", "model", "user", "project", "kind", "user_id", "project_id"))
"""Columns that name a call's user, project, ...: None in one is calls without one (so is
None in a tag's column, ``tag:NAME``)."""


def _shown_column(column: str) -> str:
    """A column's name as Markdown shows it: a tag's (``tag:NAME``) is the asker's text."""
    return _shown("", column) if column.startswith(TAG_GROUP) else column


def _shown(column: str, value: Cell) -> str:
    if value is None and (column in _KEY_COLUMNS or column.startswith(TAG_GROUP)):
        return "(none)"
    if isinstance(value, Decimal) and column.endswith("_percent"):
        return f"{value:,}"  # as computed, to a tenth: cents would claim a precision it lacks
    if isinstance(value, Decimal):
        return shown_money(value)
    return _markdown_text(_text(value))


def _markdown_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _markdown_text(text: str) -> str:
    """``text`` as one line of Markdown that renders as itself: a line break would end
    the row or the item, and a host's user id like "[sign in](https://...)" or
    "<img src=x onerror=...>" must be no link or markup wherever the export is rendered,
    nor "|" a cell of its own."""
    return one_line(text).translate(_MARKDOWN_ESCAPES)


def _markdown_line(text: str) -> str:
    """``text`` escaped as ``_markdown_text``, for the start of a heading or list item,
    where "# ", "> ", "- " or "1. " would also open a block of its own."""
    return _BLOCK_MARK.sub(lambda before: before[0] + "\\", _markdown_text(text), count=1)


_MARKDOWN_ESCAPES = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|~&"})
_BLOCK_MARK = re.compile(r"^(?:\d{1,9}(?=[.)])|(?=[#>+=-]))")
"""Where a mark opening a block at a line's start is (a heading's #, a quote's >, a list
item's - + or 1. 1), a setext underline's =): the text before it, to put a backslash after."""


# Reports travel over NATS (``events.queries.ReportAnswer``) with each column's kind, so
# the receiver gets the same typed cells back: Decimal stays Decimal.
_KINDS: tuple[tuple[type, CellKind], ...] = (
    (bool, "text"),
    (int, "integer"),
    (Decimal, "decimal"),
    (datetime, "datetime"),
    (date, "date"),
    (str, "text"),
)
_READERS: dict[CellKind, Callable[[Any], Cell]] = {
    "text": str,
    "integer": int,
    "decimal": Decimal,
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
}


def _kind(cells: list[Cell]) -> CellKind:
    first = next((c for c in cells if c is not None), "")
    return next(kind for cls, kind in _KINDS if isinstance(first, cls))


def to_answer(report: Report) -> ReportAnswer:
    tables = []
    for table in report.tables:
        kinds = [_kind([row[i] for row in table.rows]) for i in range(len(table.columns))]
        rows = [
            [c if c is None or isinstance(c, int) else _text(c) for c in row] for row in table.rows
        ]
        tables.append(
            ReportTable(title=table.title, columns=list(table.columns), kinds=kinds, rows=rows)
        )
    return ReportAnswer(
        title=report.title, start=report.start, end=report.end, tables=tables, notes=report.notes
    )


def from_answer(answer: ReportAnswer) -> Report:
    tables = []
    for table in answer.tables:
        readers = [_READERS[kind] for kind in table.kinds]
        rows = [
            tuple(None if c is None else read(c) for read, c in zip(readers, row, strict=True))
            for row in table.rows
        ]
        tables.append(Table(table.title, tuple(table.columns), rows))
    return Report(answer.title, answer.start, answer.end, tables, list(answer.notes))
