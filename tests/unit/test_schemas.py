"""The JSON Schemas in docs/schemas are what the event and request/reply models accept."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import jsonschema

from budget.report_format import Report, Table, to_answer
from events import encode
from events.rpc import CheckRequest
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


def test_a_check_request_validates_against_its_schema() -> None:
    schema = json.loads((DOCS / "rpc" / "enforcer.check.request.json").read_text())
    request = CheckRequest(model="gpt-4o", user_id="alice", estimated_cost=Decimal("0.01"))
    jsonschema.validate(json.loads(request.model_dump_json()), schema)


def test_a_report_answer_validates_against_its_schema() -> None:
    schema = json.loads((DOCS / "rpc" / "query.report.reply.json").read_text())
    start = datetime(2026, 11, 1, tzinfo=UTC)
    table = Table("Totals", ("model", "cost_usd", "requests"), [("gpt-4o", Decimal("1.5"), 3)])
    answer = to_answer(Report("Usage", start, start, [table]))
    jsonschema.validate(json.loads(answer.model_dump_json()), schema)
