"""The methods a path of the API answers, for a 405's ``Allow`` header.

The router refuses a method with the methods of the first route whose path matched
(``GET`` for ``/policies/{policy_id}``), not of every route on that path (also ``PUT``
and ``DELETE``): a client reading ``Allow`` learnt that the policy could not be changed.
The OpenAPI document lists every route by path, as the API describes itself.
"""

from __future__ import annotations

import re

from fastapi import FastAPI

__all__ = ["allowed_methods"]

_METHODS = ("get", "post", "put", "patch", "delete")
_Routes = tuple[tuple[re.Pattern[str], frozenset[str]], ...]


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method a route of ``app`` answers on ``path``, upper-case, in the order of
    ``_METHODS``; empty when no route of the document has that path."""
    allowed: set[str] = set()
    for pattern, methods in _routes(app):
        if pattern.fullmatch(path):
            allowed |= methods
    return [m.upper() for m in _METHODS if m in allowed]


def _routes(app: FastAPI) -> _Routes:
    """Each path of ``app``'s document as a pattern, with its methods; made once per app
    (the document is made once too)."""
    routes: _Routes | None = getattr(app.state, "method_routes", None)
    if routes is None:
        paths = app.openapi()["paths"]
        routes = tuple(
            (_pattern(template), frozenset(item) & set(_METHODS))
            for template, item in paths.items()
        )
        app.state.method_routes = routes
    return routes


def _pattern(template: str) -> re.Pattern[str]:
    """``/policies/{policy_id}`` as a pattern: each parameter one path segment."""
    parts = re.split(r"\{[^}/]+\}", template)
    return re.compile("[^/]+".join(re.escape(part) for part in parts))
