"""The reports (summary, trend, comparison, projection, custom) in JSON, CSV or Markdown,
built by the same ``ReportBuilder`` as the CLI and the query service.

A CSV has no place for a report's notes (calls without a price, a widened window, the
comparison's other window, the zone counted), and writing them into it would break the
table for spreadsheet tools: a CSV answer carries them in its ``Report-Notes`` header
instead (a Structured Field List of strings, RFC 9651), as the CLI prints them on stderr,
and links the whole report as JSON (``Link: <...>; rel="describedby"``, RFC 8288), where
they are with the tables' titles.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, Response

from budget.report_format import ExportFormat, Report, to_answer
from events.policy import iana_zone
from events.queries import QueryFieldError, QueryTime, ReportAnswer, ReportQuery
from services.api.context import ApiServices, current_services
from services.api.exact_json import ExactJsonRoute
from services.api.limits import limited_read
from services.api.problems import LIMITED_RESPONSES, Problem
from services.api.structured_fields import string_list

__all__ = ["router"]

router = APIRouter(
    route_class=ExactJsonRoute,
    prefix="/reports",
    tags=["reports"],
    dependencies=[Depends(limited_read)],
    responses=LIMITED_RESPONSES,
)
Kind = Literal["summary", "trend", "comparison", "projection", "custom"]
When = Annotated[QueryTime | None, Query()]
_MEDIA = {ExportFormat.CSV: "text/csv; charset=utf-8", ExportFormat.MARKDOWN: "text/markdown"}
_SUFFIX = {ExportFormat.CSV: "csv", ExportFormat.MARKDOWN: "md"}
NOTES_HEADER = "Report-Notes"
_CSV_HEADERS = {
    NOTES_HEADER: {
        "description": "The report's notes, which a CSV has no place for (calls without a"
        " price, a widened window, the comparison's other window, the zone counted): an"
        " RFC 9651 Structured Field List of strings, in order (a note beyond printable ASCII"
        ' is a Display String, %"..."). Absent when the report has none.',
        "schema": {"type": "string"},
        "example": '"previous window 2026-11-01T00:00:00+00:00 to 2026-11-08T00:00:00+00:00"',
    },
    "Link": {
        "description": 'With a CSV: the same report as JSON (rel="describedby"), which holds'
        " the notes and the tables' titles too.",
        "schema": {"type": "string"},
    },
}


@router.get(
    "/{kind}",
    summary="A report; custom and comparison need start and end (comparison also previous_*)",
    response_model=ReportAnswer,
    responses={200: {"content": {"text/csv": {}, "text/markdown": {}}, "headers": _CSV_HEADERS}},
)
async def report(
    request: Request,
    api: Annotated[ApiServices, Depends(current_services)],
    kind: Kind,
    format: ExportFormat = ExportFormat.JSON,
    period: Literal["daily", "weekly", "monthly"] = "monthly",
    days: Annotated[int, Query(ge=1, le=3660)] = 30,
    interval: Literal["daily", "weekly"] = "daily",
    start: When = None,
    end: When = None,
    previous_start: When = None,
    previous_end: When = None,
    group_by: Annotated[list[str] | None, Query(max_length=5)] = None,
    tz: Annotated[
        str,
        Query(
            max_length=64,
            description="IANA time zone whose days, weeks and months the summary, trend and"
            " projection count (day boundaries are exact in any zone)",
        ),
    ] = "UTC",
) -> Response:
    try:
        zone = iana_zone(tz)
    except ValueError as exc:
        raise _problem("tz", exc) from None
    try:
        query = ReportQuery(
            tz=zone,
            kind=kind,
            period=period,
            days=days,
            interval=interval,
            start=start,
            end=end,
            previous_start=previous_start,
            previous_end=previous_end,
            group_by=group_by or [],
        )
        built = await api.database.report(query)
    except QueryFieldError as exc:
        raise _problem(exc.field, exc) from None
    except ValueError as exc:
        raise _problem(None, exc) from None
    if format is ExportFormat.JSON:
        return Response(to_answer(built).model_dump_json(), media_type="application/json")
    name = f"{kind}-report.{_SUFFIX[format]}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    if format is ExportFormat.CSV:
        headers.update(_csv_headers(request, built))
    return PlainTextResponse(built.export(format), media_type=_MEDIA[format], headers=headers)


def _csv_headers(request: Request, built: Report) -> dict[str, str]:
    """What a CSV leaves out, beside it: the notes, and a link to the whole report."""
    as_json = request.url.include_query_params(format=ExportFormat.JSON.value)
    headers = {
        "Link": f'<{as_json.path}?{as_json.query}>; rel="describedby"; type="application/json"'
    }
    if built.notes:
        headers[NOTES_HEADER] = string_list(built.notes)
    return headers


def _problem(field: str | None, exc: ValueError) -> Problem:
    """A 422 naming the query parameter at fault (``query`` alone when no one is)."""
    name = f"query.{field}" if field else "query"
    return Problem(422, f"{name}: {exc}", errors=[{"field": name, "message": str(exc)}])
