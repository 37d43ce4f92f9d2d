"""The JSON Schemas in docs/schemas are what the event models accept."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from events import encode
from events.schema import schema_files

from support import usage_event

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def test_committed_schemas_are_current() -> None:
    """Regenerate with `./run python -m events.schema` after changing an event."""
    for name, text in schema_files().items():
        assert (DOCS / name).read_text() == text, f"{name} is stale"


def test_an_encoded_event_validates_against_its_schema() -> None:
    schema = json.loads((DOCS / "UsageRecorded.v2.json").read_text())
    jsonschema.validate(json.loads(encode(usage_event())), schema)
