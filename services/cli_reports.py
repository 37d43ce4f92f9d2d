"""``budget report summary|trend|compare|projection|custom|history``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer

from budget.periods import Period
from budget.report_format import ExportFormat, Report
from budget.reports import GROUPS, ReportGenerator
from events.policy import iana_zone
from events.queries import MAX_HISTORY_ROWS, TAG_GROUP
from projections.history_pages import tag_filters
from projections.report_queries import report_dimension
from services.cli_context import database_queries, query_time_option

__all__ = ["report_app"]

report_app = typer.Typer(no_args_is_help=True)

FormatOption = Annotated[
    ExportFormat,
    typer.Option("--format", help="md, csv or json (csv: the report's notes go to stderr)"),
]


def _writable(output: Path | None) -> Path | None:
    """An ``--output`` file that can be written, checked before the report runs."""
    if output is None:
        return None
    folder = output.parent
    if output.is_dir():
        raise typer.BadParameter(f"{output} is a directory")
    if not folder.is_dir():
        raise typer.BadParameter(f"folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (
        output.exists() and not os.access(output, os.W_OK)
    ):
        raise typer.BadParameter(f"cannot write to {output}")
    return output


OutputOption = Annotated[
    Path | None,
    typer.Option("--output", callback=_writable, help="write to this file (its folder must exist)"),
]


def _zone(name: str) -> str:
    try:
        return iana_zone(name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


TzOption = Annotated[
    str,
    typer.Option(
        "--tz",
        callback=_zone,
        help="IANA time zone whose days, weeks and months count, and of times given"
        " without a zone (e.g. Asia/Kolkata)",
    ),
]


def _groups(groups: list[str] | None) -> list[str] | None:
    try:
        report_dimension(groups or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return groups


def _tags(items: list[str] | None) -> list[str] | None:
    try:
        tag_filters(items or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return items


def _interval(name: str) -> str:
    if name not in ("daily", "weekly"):
        raise typer.BadParameter(f"{name!r} is not one of 'daily', 'weekly'")
    return name


GroupOption = Annotated[
    list[str] | None,
    typer.Option(
        "--group-by",
        callback=_groups,
        help=f"repeatable: {', '.join(GROUPS)} (provider+model together); or one tag alone,"
        f" {TAG_GROUP}NAME (e.g. {TAG_GROUP}team)",
    ),
]
DaysOption = Annotated[
    int, typer.Option(min=1, max=3660, help="how many days back, today included")
]


def _emit(
    make: Callable[[ReportGenerator], Coroutine[Any, Any, Report]],
    fmt: ExportFormat,
    output: Path | None,
) -> None:

    async def build() -> Report:
        async with database_queries() as queries:
            return await make(ReportGenerator(queries))

    report = asyncio.run(build())
    text = report.export(fmt)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output} ({fmt.value}, {sum(len(t.rows) for t in report.tables)} rows)")
    if fmt is ExportFormat.CSV:
        # CSV has no place for them, and they say what the rows leave out: a history cut
        # at --limit, calls without a price, a widened window, the comparison's other one.
        for note in report.notes:
            typer.echo(f"note: {note}", err=True)


def _aware(value: datetime, tz: str) -> datetime:
    """Times without a zone on the command line are in ``--tz`` (UTC by default)."""
    return value.replace(tzinfo=ZoneInfo(tz)) if value.tzinfo is None else value


def _window(start: datetime, end: datetime, tz: str, names: str) -> tuple[datetime, datetime]:
    """[start, end) in ``tz`` when without a zone; refused before connecting when empty."""
    first, last = (
        query_time_option(_aware(time, tz), name)
        for time, name in zip((start, end), names.split("/"), strict=True)
    )
    if last <= first:
        raise typer.BadParameter(
            f"the end ({last.isoformat()}) must be after the start", param_hint=names
        )
    return first, last


@report_app.command()
def summary(
    period: Annotated[Period, typer.Option(help="calendar period (of --tz)")] = Period.MONTHLY,
    tz: TzOption = "UTC",
    fmt: FormatOption = ExportFormat.MARKDOWN,
    output: OutputOption = None,
) -> None:
    """The current period by provider and model, and every budget's standing."""
    _emit(lambda g: g.generate_summary_report(period, tz), fmt, output)


@report_app.command()
def trend(
    days: DaysOption = 30,
    interval: Annotated[str, typer.Option(callback=_interval, help="daily or weekly")] = "daily",
    tz: TzOption = "UTC",
    fmt: FormatOption = ExportFormat.MARKDOWN,
    output: OutputOption = None,
) -> None:
    """Spend per day or week (of --tz), with the change from the previous point."""
    _emit(lambda g: g.generate_trend_report(days, interval, tz), fmt, output)


@report_app.command()
def compare(
    current_start: Annotated[datetime, typer.Option(help="ISO 8601, in --tz if no zone")],
    current_end: Annotated[datetime, typer.Option(help="exclusive")],
    previous_start: Annotated[datetime, typer.Option(help="ISO 8601, in --tz if no zone")],
    previous_end: Annotated[datetime, typer.Option(help="exclusive")],
    group_by: GroupOption = None,
    tz: TzOption = "UTC",
    fmt: FormatOption = ExportFormat.MARKDOWN,
    output: OutputOption = None,
) -> None:
    """Two windows side by side per group (default: model): absolute and percent change."""
    current = _window(current_start, current_end, tz, "--current-start/--current-end")
    previous = _window(previous_start, previous_end, tz, "--previous-start/--previous-end")
    _emit(
        lambda g: g.generate_comparison_report(*current, *previous, group_by or ["model"]),
        fmt,
        output,
    )


@report_app.command()
def projection(
    days: Annotated[
        int, typer.Option(min=1, max=3660, help="days to forecast (at least to the month's end)")
    ] = 30,
    tz: TzOption = "UTC",
    fmt: FormatOption = ExportFormat.MARKDOWN,
    output: OutputOption = None,
) -> None:
    """Forecast spend per day and per month, and when each budget runs out at this pace."""
    _emit(lambda g: g.generate_projection_report(days, tz), fmt, output)


@report_app.command()
def custom(
    start: Annotated[datetime, typer.Option(help="ISO 8601, in --tz if no zone")],
    end: Annotated[datetime, typer.Option(help="exclusive")],
    group_by: GroupOption = None,
    tz: TzOption = "UTC",
    fmt: FormatOption = ExportFormat.MARKDOWN,
    output: OutputOption = None,
) -> None:
    """Totals in [START, END), grouped as asked."""
    window = _window(start, end, tz, "--start/--end")
    _emit(lambda g: g.generate_report(*window, group_by or []), fmt, output)


@report_app.command()
def history(
    start: Annotated[datetime, typer.Option(help="ISO 8601, in --tz if no zone")],
    end: Annotated[datetime, typer.Option(help="exclusive")],
    provider: Annotated[str | None, typer.Option(help="only this provider")] = None,
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    user: Annotated[str | None, typer.Option(help="only this user")] = None,
    project: Annotated[str | None, typer.Option(help="only this project")] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(
            callback=_tags,
            metavar="KEY=VALUE",
            help="only calls with this tag (repeatable: with each of them)",
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            min=1, max=MAX_HISTORY_ROWS, help=f"at most this many calls (up to {MAX_HISTORY_ROWS})"
        ),
    ] = 1000,
    tz: TzOption = "UTC",
    fmt: FormatOption = ExportFormat.MARKDOWN,
    output: OutputOption = None,
) -> None:
    """The calls in [START, END), oldest first, with their cost: browse or export usage."""
    window = _window(start, end, tz, "--start/--end")
    _emit(
        lambda g: g.get_usage_history(
            *window,
            provider=provider,
            model=model,
            user_id=user,
            project_id=project,
            tags=tag_filters(tag or []),
            limit=limit,
        ),
        fmt,
        output,
    )
