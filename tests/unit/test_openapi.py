"""The committed OpenAPI document is the app's."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fastapi.routing import APIRoute

from services.api.openapi import DEFAULT_FILE, openapi_document
from services.api.query_names import query_names
from services.api.routes import AREAS, PREFIX

ROOT = Path(__file__).resolve().parents[2]


def test_openapi_document_is_current() -> None:
    """Regenerate with ``python -m services.api.openapi`` when a route changes."""
    committed = json.loads((ROOT / DEFAULT_FILE).read_text())
    assert committed == json.loads(json.dumps(openapi_document()))


def test_every_api_operation_documents_its_problems() -> None:
    document = openapi_document()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
            if not path.startswith("/api/v1/"):
                continue
            for status in ("401", "403", "422"):
                content = operation["responses"][status]["content"]
                assert list(content) == ["application/problem+json"], (path, status)


def test_each_route_takes_the_query_parameters_its_document_names() -> None:
    """An unknown query parameter is refused (services.api.query_names): a parameter the
    document names must never be one."""
    documented = {
        (path, method.upper()): {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
        for path, item in openapi_document()["paths"].items()
        for method, op in item.items()
    }
    routes = [r for area in AREAS for r in area.router.routes if isinstance(r, APIRoute)]
    for route in routes:
        for method in route.methods:
            path = re.sub(r":\w+}", "}", route.path)  # {model:path} is documented {model}
            named = documented[(f"{PREFIX}{path}", method)]
            assert query_names(route) == named, (method, route.path)
    assert len(routes) == sum(path.startswith(PREFIX) for path, _ in documented)
