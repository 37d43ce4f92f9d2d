"""Reports: pick a kind, a date range and a grouping; see its tables and a chart, and
export it as CSV, JSON or Markdown from the API (``/api/v1/reports/{kind}``).

Dates are whole days in the reader's zone: "from" its first midnight "through" the
last day's end. The summary, trend and projection count that zone's days, weeks and
months (``tz``), exact in any zone: the rollups are kept per quarter hour.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from starlette.datastructures import QueryParams

from budget.report_format import Report
from events.queries import TAG_GROUP, QueryFieldError, ReportQuery
from services.api.console.charts import report_chart
from services.api.console.forms import FORM_ERROR, FormState, local_date, reader_zone, validate
from services.api.console.guard import ConsoleRoute, Viewer
from services.api.console.render import render
from services.api.console.report_tables import shown_table
from services.api.context import services

__all__ = ["router"]

router = APIRouter(route_class=ConsoleRoute)

KINDS = [
    ("summary", "Summary: this period by provider and model"),
    ("trend", "Trend: spend per day or week"),
    ("comparison", "Comparison: two ranges side by side"),
    ("projection", "Projection: forecast and budgets at this pace"),
    ("custom", "Custom: totals over a range"),
]
GROUPS = [
    ("", "No grouping (one total)"),
    ("provider", "Provider"),
    ("model", "Model"),
    ("provider,model", "Provider and model"),
    ("user", "User"),
    ("project", "Project"),
    ("kind", "Kind of call"),
]
DATES = ("start", "end", "previous_start", "previous_end")
BLANK_CHOICES = frozenset({"group_by"})
"""Fields whose blank is one of their choices (``GROUPS``' one total), not their default."""
CHOICES = ("kind", "period", "interval", "days", "group_by", "tz")
_COMPARED = {"previous_start": "the day to compare from", "previous_end": "the last day to compare"}
_BEFORE = "the same length just before"
_DAY = timedelta(days=1)


@router.get("/reports")
async def reports(request: Request, _: Viewer) -> Response:
    state = FormState(values=_typed(request))
    query = _query(state)
    report: Report | None = None
    if query is not None:
        try:
            report = await services(request).database.report(query)
        except QueryFieldError as exc:  # next to its field, when the form has one
            state.fail(exc.field if exc.field in (*DATES, *CHOICES) else FORM_ERROR, str(exc))
        except ValueError as exc:
            state.fail(FORM_ERROR, str(exc))
    context = {
        "title": "Reports",
        # the zone the report counted, from the server: the script would name the reader's
        # zone over it, also on a first visit, whose report (no zone sent yet) counts UTC's
        "zone": query.tz if query else state.value("tz") or "UTC",
        "form": state,
        "kinds": KINDS,
        "groups": _groups(state.value("group_by")),
        "report": report,
        "tables": [shown_table(t) for t in report.tables] if report else [],
        "chart_data": report_chart(report) if report else None,
        "export_links": _exports(query) if report and query else [],
    }
    return render(request, "reports.html", context, status=422 if state.errors else 200)


def _groups(chosen: str) -> list[tuple[str, str]]:
    """The groupings to pick from; a tag's (``group_by=tag:team``, from an export's link
    or one shared) too when it is the one asked for, so that the form shows it."""
    if chosen.startswith(TAG_GROUP):
        return [*GROUPS, (chosen, f"Tag {chosen.removeprefix(TAG_GROUP)}")]
    return GROUPS


def _typed(request: Request) -> dict[str, str]:
    """The form as submitted, or its defaults: the last 30 days by model."""
    params = request.query_params
    today = datetime.now(UTC).date()
    defaults = {
        "kind": "summary",
        "period": "monthly",
        "interval": "daily",
        "days": "30",
        "group_by": "model",
        "start": (today - 29 * _DAY).isoformat(),
        "end": today.isoformat(),
    }

    def value(name: str) -> str:
        typed = params.get(name, "").strip()
        return typed if typed or _chosen_blank(name, params) else defaults.get(name, "")

    return {name: value(name) for name in (*CHOICES, *DATES)}


def _chosen_blank(name: str, params: QueryParams) -> bool:
    """Whether ``name`` was sent blank as a choice: "No grouping (one total)", not a
    grouping left out (a first visit, a link), which takes the default."""
    return name in BLANK_CHOICES and name in params


def _query(state: FormState) -> ReportQuery | None:
    if state.value("kind") not in dict(KINDS):
        state.fail("kind", "pick one of the reports listed")
    tz = reader_zone(state)
    comparison = state.value("kind") == "comparison"
    dates: dict[str, datetime | None] = {}
    # A comparison's own window is no other report's: typed, hidden or defaulted, it is
    # ignored (its default, as long before start as the range is long, may be out of range).
    for name in DATES if comparison else ("start", "end"):
        try:
            dates[name] = local_date(state.value(name), tz)
        except ValueError as exc:
            state.fail(name, str(exc))
    for name in ("end", "previous_end"):
        last = dates.get(name)
        dates[name] = last + _DAY if last else None  # "through" the last day
    start, end = dates.get("start"), dates.get("end")
    given = [name for name in ("previous_start", "previous_end") if dates.get(name)]
    if comparison and start and end and not given:
        # Comparison's default: the same length of time just before.
        dates["previous_start"], dates["previous_end"] = start - (end - start), start
    elif comparison and len(given) == 1 and not state.errors:
        missing = "previous_end" if given == ["previous_start"] else "previous_start"
        state.fail(missing, f"give {_COMPARED[missing]} too, or leave both blank for {_BEFORE}")
    if state.errors:
        return None
    data = {
        **{name: state.value(name) for name in ("kind", "period", "interval", "days")},
        "tz": str(tz),
        "group_by": [g for g in state.value("group_by").split(",") if g],
        **{name: at for name, at in dates.items() if at is not None},
    }
    return validate(ReportQuery, data, state, (*CHOICES, *DATES))


def _exports(query: ReportQuery) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = [
        (name, str(getattr(query, name))) for name in ("period", "interval", "days", "tz")
    ]
    for name in DATES:
        value = getattr(query, name)
        if value is not None:
            params.append((name, value.astimezone(UTC).isoformat()))
    params += [("group_by", g) for g in query.group_by]
    return [
        (label, f"/api/v1/reports/{query.kind}?{urlencode([*params, ('format', fmt)])}")
        for label, fmt in (("CSV", "csv"), ("JSON", "json"), ("Markdown", "md"))
    ]
