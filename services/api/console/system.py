"""System: each projection's lag and newest event, dead letters with their reasons, and
whether NATS, PostgreSQL, the enforcer and the query service answer. The same functions
as ``/api/v1/projections``, ``/api/v1/dead-letters`` and ``/api/v1/services``."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Query, Request, Response

from services.api.console.guard import ConsoleRoute, Viewer
from services.api.console.render import render
from services.api.context import services
from services.api.problems import Problem
from services.api.routes import system as api

__all__ = ["router"]

router = APIRouter(route_class=ConsoleRoute)

DEAD_LETTERS = 50
T = TypeVar("T")


@router.get("/system")
async def system(
    request: Request,
    _: Viewer,
    before: Annotated[
        int | None, Query(ge=1, description="older dead letters than this seq")
    ] = None,
) -> Response:
    found = services(request)
    problems: list[str] = []

    async def shown(part: Awaitable[list[T]]) -> list[T]:
        # NATS being down is what this page is for: say so, show the rest.
        try:
            return await part
        except Problem as problem:
            problems.append(problem.detail)
            return []

    letters = await shown(api.dead_letters(found, limit=DEAD_LETTERS, before=before))
    context = {
        "title": "System",
        "services": await api.service_health(found),
        "projections": await shown(api.projections(found)),
        "dead_letters": letters,
        "dead_letters_shown": DEAD_LETTERS,
        # A full page may have older ones: page on below its oldest (as the API's `before`).
        "older": (
            f"/system?before={min(letter.seq for letter in letters)}#dead-letters"
            if len(letters) == DEAD_LETTERS
            else None
        ),
        "newest": "/system#dead-letters" if before is not None else None,
        "problems": sorted(set(problems)),
    }
    return render(request, "system.html", context)
