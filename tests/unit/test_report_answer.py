"""A report sent over NATS arrives with the same typed cells: money stays Decimal."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from datetime import UTC, date, datetime
from decimal import Decimal

from markdown_it import MarkdownIt

from budget.report_format import Report, Table, from_answer, to_answer
from events.queries import ReportAnswer

START = datetime(2026, 11, 1, tzinfo=UTC)


def round_trip(report: Report) -> Report:
    wire = to_answer(report).model_dump_json()
    return from_answer(ReportAnswer.model_validate_json(wire))


def test_every_kind_of_cell_survives_the_wire() -> None:
    table = Table(
        "Budgets",
        ("policy", "requests", "spent_usd", "period_start", "day", "used_percent"),
        [
            ("team", 3, Decimal("1.0000001"), START, date(2026, 11, 2), None),
            ("other", 0, Decimal("0"), START, date(2026, 11, 3), Decimal("12.5")),
        ],
    )
    report = Report("Summary", START, START.replace(month=12), [table], ["a note"])
    assert round_trip(report) == report


def test_an_empty_table_keeps_its_columns() -> None:
    report = Report("Empty", START, START, [Table("Forecast", ("day", "expected_usd"))])
    assert round_trip(report) == report


def test_markdown_shows_amounts_of_any_size() -> None:
    """A policy limit of 1E+30 once made the Markdown export fail (28-digit context)."""
    report = Report(
        "limits",
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 2, 1, tzinfo=UTC),
        [Table("t", ("limit",), [(Decimal("1E+30"),), (Decimal("1234.565"),)])],
    )
    text = report.to_markdown()
    assert "| 1,000,000,000,000,000,000,000,000,000,000.00 |" in text
    assert "| 1,234.57 |" in text


def test_markdown_shows_sub_cent_amounts_in_full_and_one_row_per_row() -> None:
    """A cheap embedding call's cost is not shown as zero; a user id with a line break
    (the contract allows it) does not break the table."""
    report = Report(
        "calls",
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 2, 1, tzinfo=UTC),
        [Table("t", ("user", "cost"), [("bob\n| forged | row |", Decimal("1E-7"))])],
    )
    rows = [line for line in report.to_markdown().splitlines() if line.startswith("| bob")]
    assert rows == ["| bob \\| forged \\| row \\| | 0.0000001 |"]


def test_json_and_csv_carry_amounts_as_plain_decimal_text() -> None:
    """A cheap embedding call's cost (0.00000010 from PostgreSQL), a sum of free calls
    (0.00000000) and a limit typed 1E+2 were exported as str() writes them: "1.0E-7",
    "0E-8", "1E+2"."""
    amounts = [Decimal("0.00000010"), Decimal("0.00000000"), Decimal("1E+2"), Decimal("-1E-9")]
    shown = ["0.00000010", "0.00000000", "100", "-0.000000001"]
    report = Report("t", START, START, [Table("t", ("cost_usd",), [(a,) for a in amounts])])
    rows = json.loads(report.to_json())["tables"][0]["rows"]
    assert [r["cost_usd"] for r in rows] == shown
    assert [c[0] for c in csv.reader(io.StringIO(report.to_csv(), newline=""))][1:] == shown
    assert round_trip(report) == report


def test_csv_defuses_formulas_in_text_and_keeps_numbers() -> None:
    """A user id like ``=HYPERLINK(...)`` must not run when the export is opened in a
    spreadsheet; a negative amount stays a number."""
    hostile = ["=1+1", "+1", "-x", "@SUM(A1)", "\tx", "\rx"]
    table = Table("By user", ("user", "cost_usd"), [(h, Decimal("-1.5")) for h in hostile])
    text = Report("Users", START, START, [table]).to_csv()
    cells = list(csv.reader(io.StringIO(text, newline="")))[1:]
    assert [c[0] for c in cells] == ["'" + h for h in hostile[:4]] + ["'\tx", "'\rx"]
    assert {c[1] for c in cells} == {"-1.5"}


def test_markdown_shows_percentages_to_the_tenth_they_are_computed_to() -> None:
    """A share or a percent used is computed to a tenth; shown as money it claimed cents
    of a percent (12.50, 10,000.00)."""
    table = Table(
        "Budgets",
        ("spent_usd", "used_percent", "share_percent"),
        [(Decimal("1.5"), Decimal("12.5"), Decimal("10000.0"))],
    )
    text = Report("Summary", START, START, [table]).to_markdown()
    assert "| 1.50 | 12.5 | 10,000.0 |" in text


def test_markdown_shows_text_cells_as_text_not_links_or_markup() -> None:
    """User and project ids come from host apps: rendered, none may become a link, an
    image, raw HTML or emphasis in the exported Markdown, and each reads as it was."""
    hostile = [
        "[sign in](https://evil.example)",
        "<img src=x onerror=alert(1)>",
        "**urgent** `code` ~~gone~~ a_b_c",
        "back\\slash &lt; | pipe",
    ]
    table = Table("By user", ("user", "cost_usd"), [(h, Decimal(1)) for h in hostile])
    text = Report("Users", START, START, [table]).to_markdown()
    rendered = MarkdownIt("commonmark").enable("table").render(text)
    assert "<table>" in rendered
    for tag in ("<a ", "<img", "<em>", "<strong>", "<code>", "<s>", "<del>"):
        assert tag not in rendered, rendered
    cells = re.findall(r"<td>(.*?)</td>", rendered)
    assert [html.unescape(c) for c in cells[::2]] == hostile


def test_markdown_notes_and_titles_render_as_text_not_blocks_links_or_markup() -> None:
    """A history's notes repeat its filters (a host's user id, as typed in a shared link):
    none may become a link, markup, a heading, a quote or a list of its own, nor spill
    onto a line of its own, and each reads as it was."""
    hostile = [
        "user_id: [sign in](https://evil.example) <b>x</b> a|b `c`",
        "# Approved by finance",
        "> quoted",
        "- nested",
        "---",
        "12. ordered",
        "two\nlines",
    ]
    table = Table("Calls <i>", ("user_id", "cost_usd"), [("bob", Decimal(1))])
    text = Report("Usage *history*", START, START, [table], hostile).to_markdown()
    rendered = MarkdownIt("commonmark").enable("table").render(text)
    for tag in ("<a ", "<b>", "<i>", "<em>", "<code>", "<blockquote>", "<ol", "<hr", "<h1>#"):
        assert tag not in rendered, rendered
    assert re.findall(r"<h(\d)>", rendered) == ["1", "2"]
    assert html.unescape(re.findall(r"<h1>(.*?)</h1>", rendered)[0]) == "Usage *history*"
    assert html.unescape(re.findall(r"<h2>(.*?)</h2>", rendered)[0]) == "Calls <i>"
    items = [html.unescape(i) for i in re.findall(r"<li>(.*?)</li>", rendered)]
    assert items == [*hostile[:-1], "two lines"]


def test_markdown_shows_a_tags_name_as_text_in_the_headings_and_header() -> None:
    """A report by tag names the tag, as asked (``group_by=tag:...`` in a link someone
    was sent): no link, markup or extra cell in the title, table title or header."""
    name = "tag:[x](https://evil.example)|<b>"
    table = Table(f"Change by {name}", (name, "cost_usd"), [("a", Decimal(1))])
    text = Report(f"Usage report by {name}", START, START, [table]).to_markdown()
    escaped = "tag:\\[x\\](https://evil.example)\\|\\<b\\>"
    lines = text.splitlines()
    assert lines[0] == f"# Usage report by {escaped}"
    assert f"## Change by {escaped}" in lines
    assert f"| {escaped} | cost_usd |" in lines
    rendered = MarkdownIt().enable("table").render(text)
    assert "<a " not in rendered and "<b>" not in rendered
