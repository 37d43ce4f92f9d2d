"""The committed OpenAPI document is the app's."""

from __future__ import annotations

import json
from pathlib import Path

from services.api.openapi import DEFAULT_FILE, openapi_document

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
