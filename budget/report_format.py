"""A report: titled tables of rows, exported as JSON, CSV or Markdown.

Money stays ``Decimal`` in the report; exports show it as decimal text (JSON strings, so
no float rounding sneaks in), rounded to cents in Markdown only.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

__all__ = ["ExportFormat", "Report", "Table"]

Cell = str | int | Decimal | date | datetime | None


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
        """Each table as a CSV block (header row first), blocks separated by a blank line."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for i, table in enumerate(self.tables):
            if i:
                out.write("\n")
            writer.writerow(table.columns)
            writer.writerows([_text(c) for c in row] for row in table.rows)
        return out.getvalue()

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", "", f"{_text(self.start)} to {_text(self.end)} (UTC)", ""]
        for table in self.tables:
            lines += [f"## {table.title}", ""]
            if not table.rows:
                lines += ["(no data)", ""]
                continue
            lines.append("| " + " | ".join(table.columns) + " |")
            lines.append("| " + " | ".join("---" for _ in table.columns) + " |")
            lines += ["| " + " | ".join(_shown(c) for c in row) + " |" for row in table.rows]
            lines.append("")
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _shown(value: Cell) -> str:
    if isinstance(value, Decimal):  # money to the cent, half up; sub-cent amounts in full
        if value and abs(value) < Decimal("0.01"):
            return f"{value:.6f}"
        return f"{value.quantize(Decimal('0.01'), ROUND_HALF_UP):,}"
    return _text(value).replace("|", "\\|")
