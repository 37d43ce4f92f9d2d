"""A query parameter the route does not take is a 422 naming it, not ignored: ignored, a
misspelt filter (``/usage?user=alice`` for ``user_id``, ``/spend?user_id=``) answered every
row as if filtered, and an export held calls of everyone."""

from __future__ import annotations

import difflib

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from services.api.problems import Problem

__all__ = ["known_query_parameters", "query_names"]

_names: dict[int, frozenset[str]] = {}
"""Each route's query parameters by ``id(route)``: the routes live as long as the app."""


def query_names(route: APIRoute) -> frozenset[str]:
    """The query parameters ``route`` takes, its dependencies' included."""
    found = _names.get(id(route))
    if found is None:
        found = _names[id(route)] = frozenset(_of(route.dependant))
    return found


def _of(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _of(sub)
    return names


async def known_query_parameters(request: Request) -> None:
    """A router dependency: a 422 for each query parameter the matched route does not take."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    known = query_names(route)
    unknown = sorted({name for name in request.query_params if name not in known})
    if not unknown:
        return
    takes = ", ".join(sorted(known)) if known else "none"
    errors = [{"field": f"query.{name}", "message": _unknown(name, known)} for name in unknown]
    raise Problem(
        422,
        f"{'; '.join(e['message'] for e in errors)} (this route takes: {takes})",
        errors=errors,
    )


def _unknown(name: str, known: frozenset[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f": did you mean {close[0]!r}?" if close else ""
    return f"no query parameter {name!r} here{hint}"
