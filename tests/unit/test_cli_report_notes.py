"""``budget report ... --format csv``: the report's notes, which CSV cannot carry, reach
the reader on stderr, and the CSV itself stays one clean table. ``budget report history``
passes its filters on (tags as ``--tag KEY=VALUE``)."""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

import services.cli_reports
from budget.report_format import Report, Table
from events.queries import ReportQuery
from services.cli import app

CUT = "more than 2 calls match: showing the first 2; narrow the window or the filters"


class _Queries:
    """Answers every report with two calls and the note of a history cut at its limit."""

    asked: ClassVar[list[ReportQuery]] = []

    async def report(self, query: ReportQuery) -> Report:
        self.asked.append(query)
        assert query.start is not None and query.end is not None
        calls = Table("Calls", ("event_id",), [("a",), ("b",)])
        return Report("Usage history", query.start, query.end, [calls], [CUT])


@contextlib.asynccontextmanager
async def _queries() -> AsyncIterator[_Queries]:
    yield _Queries()


@pytest.fixture(autouse=True)
def _no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services.cli_reports, "database_queries", _queries)


WINDOW = ["--start", "2026-11-01", "--end", "2026-11-02", "--limit", "2"]


def test_a_csv_history_cut_at_its_limit_says_so_on_stderr() -> None:
    result = CliRunner().invoke(app, ["report", "history", *WINDOW, "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert list(csv.reader(io.StringIO(result.stdout))) == [["event_id"], ["a"], ["b"]]
    assert result.stderr == f"note: {CUT}\n"


def test_a_csv_written_to_a_file_says_its_notes_on_stderr(tmp_path: Path) -> None:
    target = tmp_path / "calls.csv"
    args = ["report", "history", *WINDOW, "--format", "csv", "--output", str(target)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stderr == f"note: {CUT}\n"
    assert target.read_bytes() == b"event_id\r\na\r\nb\r\n"


def test_formats_that_carry_the_notes_print_none_on_stderr() -> None:
    for fmt in ("json", "md"):
        result = CliRunner().invoke(app, ["report", "history", *WINDOW, "--format", fmt])
        assert result.exit_code == 0, result.output
        assert CUT in result.stdout and result.stderr == ""


def test_the_history_is_filtered_by_each_tag_given() -> None:
    _Queries.asked.clear()
    tags = ["--tag", "team=b", "--tag", "feature=a=b"]
    result = CliRunner().invoke(app, ["report", "history", *WINDOW, *tags])
    assert result.exit_code == 0, result.output
    assert _Queries.asked[-1].tags == {"team": "b", "feature": "a=b"}


@pytest.mark.parametrize(
    ("tags", "error"),
    [
        (["team"], "'team' must look like KEY=VALUE"),
        (["team=a", "team=b"], "'team' is given twice; a call carries one value of a tag"),
    ],
)
def test_a_tag_filter_no_call_could_match_is_refused_before_connecting(
    tags: list[str], error: str
) -> None:
    _Queries.asked.clear()
    options = [option for tag in tags for option in ("--tag", tag)]
    result = CliRunner().invoke(app, ["report", "history", *WINDOW, *options])
    said = " ".join(result.stderr.replace("│", " ").split())  # one line, out of its box
    assert result.exit_code == 2 and error in said, result.output
    assert _Queries.asked == []
