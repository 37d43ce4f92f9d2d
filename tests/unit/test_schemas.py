"""The JSON Schemas in docs/schemas are what the event models accept."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from events import encode
from events.schema import schema_files
from services.asyncapi import asyncapi_document

from support import usage_event

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def test_committed_schemas_are_current() -> None:
    """Regenerate with `./run python -m events.schema` after changing an event."""
    for name, text in schema_files().items():
        assert (DOCS / name).read_text() == text, f"{name} is stale"


def test_an_encoded_event_validates_against_its_schema() -> None:
    schema = json.loads((DOCS / "UsageRecorded.v2.json").read_text())
    jsonschema.validate(json.loads(encode(usage_event())), schema)


def test_asyncapi_document_is_current() -> None:
    """Regenerate with ``python -m services.asyncapi`` when the alert contract changes."""
    committed = (Path(__file__).parents[2] / "docs" / "asyncapi.json").read_text()
    assert committed == asyncapi_document()
