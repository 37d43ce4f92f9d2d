"""Usage history: filters, keyset pages ("Older" carries the cursor ``history_page``
returned) and export links to the API's streamed CSV / JSON of the same filters.

Times are typed in the reader's zone (the form's ``tz``); the export links carry them as
UTC instants, and the browse's pin (``as_of``), so the file holds exactly the rows the
pages show, none that arrived since.
"""

from __future__ import annotations

from datetime import UTC
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response

from projections.history_pages import Cursor, HistoryFilter
from services.api.console.forms import FORM_ERROR, FormState, local_datetime, reader_zone
from services.api.console.guard import ConsoleRoute, Viewer
from services.api.console.render import render
from services.api.context import services
from services.api.routes.history import browse

__all__ = ["PAGE_ROWS", "router"]

router = APIRouter(route_class=ConsoleRoute)

PAGE_ROWS = 50
NAMES = ("provider", "model", "user_id", "project_id")
TIMES = ("since", "until")


@router.get("/history")
async def history(request: Request, _: Viewer) -> Response:
    params = request.query_params
    state = FormState(values={k: params.get(k, "").strip() for k in (*NAMES, *TIMES, "tz")})
    where = _filter(state)
    cursor = _cursor(params.get("cursor"), state)
    rows: list[dict[str, object]] = []
    older: str | None = None
    api_params = _api_params(where)
    if not state.errors:
        rows, following, as_of = await services(request).database.read(
            lambda conn: browse(conn, where, limit=PAGE_ROWS, cursor=cursor)
        )
        older = following.encode() if following else None
        api_params["as_of"] = str(as_of)
    typed = {k: v for k, v in state.values.items() if v}
    context = {
        "title": "Usage history",
        "form": state,
        "rows": rows,
        "first_page": cursor is None,
        "older": f"/history?{urlencode({**typed, 'cursor': older})}" if older else None,
        "newest": f"/history?{urlencode(typed)}",
        # Filters with an error are left out of ``api_params``: an export then would hold
        # another range than the one asked for, so there is none until they are fixed.
        "export_links": []
        if state.errors
        else [
            (label, f"/api/v1/usage/export?{urlencode({**api_params, 'format': fmt})}")
            for label, fmt in (("CSV", "csv"), ("JSON lines", "json"))
        ],
        "providers": services(request).registry.get_all_providers(),
    }
    return render(request, "history.html", context, status=422 if state.errors else 200)


def _filter(state: FormState) -> HistoryFilter:
    tz = reader_zone(state)
    bounds = {}
    for name in TIMES:
        try:
            bounds[name] = local_datetime(state.value(name), tz)
        except ValueError as exc:
            state.fail(name, str(exc))
    since, until = bounds.get("since"), bounds.get("until")
    if since is not None and until is not None and since >= until:
        state.fail("until", "must be after From")
    provider, model, user_id, project_id = (state.value(name) or None for name in NAMES)
    return HistoryFilter(since, until, provider, model, user_id, project_id)


def _cursor(text: str | None, state: FormState) -> Cursor | None:
    if not text:
        return None
    try:
        return Cursor.decode(text)
    except ValueError as exc:
        state.fail(FORM_ERROR, str(exc))
        return None


def _api_params(where: HistoryFilter) -> dict[str, str]:
    """The API's query for the same rows (``GET /api/v1/usage[/export]``)."""
    params = {name: getattr(where, name) for name in NAMES if getattr(where, name)}
    for name in TIMES:
        at = getattr(where, name)
        if at is not None:
            params[name] = at.astimezone(UTC).isoformat()
    return params
