"""The JSON Schemas in docs/schemas are what the event and request/reply models accept."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from budget.report_format import Report, Table, to_answer
from events import encode
from events.codec import DecodeError, decode
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


# -- the cost rules, as a producer in another language validates them ------------------------

RECORDED = json.loads((DOCS / "UsageRecorded.v2.json").read_text())
_CALL = {
    "type": "UsageRecorded",
    "schema_version": 2,
    "event_id": "019ae4c2-5c1a-7d3e-9b4f-6a1c2e3d4f50",
    "occurred_at": "2026-12-01T12:00:00Z",
    "provider": "openai",
    "model": "gpt-4o",
    "usage": {"input_uncached": 10},
}
_ABSENT = object()


def _call(cost: object = _ABSENT, reason: object = _ABSENT) -> dict[str, object]:
    fields = {"cost": cost, "unpriced_reason": reason}
    return _CALL | {name: value for name, value in fields.items() if value is not _ABSENT}


def _schema_accepts(payload: dict[str, object], schema: dict[str, object] = RECORDED) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(payload)


def _model_accepts(payload: dict[str, object]) -> bool:
    try:
        decode(json.dumps(payload).encode())
    except DecodeError:
        return False
    return True


@pytest.mark.parametrize(
    "payload",
    [
        _call("0.0125"),
        _call("0"),
        _call(0),
        _call(7),
        _call("1000000000000"),
        _call("1000000000000.0"),
        _call("0." + "0" * 39 + "1"),  # 40 places
        _call("1.5E-7"),  # as str(Decimal) writes a small cost
        _call("0E-8"),  # and a zero computed from small rates
        _call("0E-1000"),  # at most MAX_WRITTEN_PLACES as written
        _call("1E+3"),
        _call(None, "no price for gpt-5-nano"),
        _call(reason="no price for gpt-5-nano"),
        _call("0.0125", None),
    ],
    ids=repr,
)
def test_the_schema_and_the_model_accept_the_wire_form(payload: dict[str, object]) -> None:
    assert _model_accepts(payload)
    assert _schema_accepts(payload)


@pytest.mark.parametrize(
    "payload",
    [
        _call(),  # neither a cost nor a reason
        _call(None),
        _call(None, ""),
        _call(reason=None),
        _call("-1"),
        _call(-1),
        _call("NaN"),
        _call("Infinity"),
        _call("1000000000000.1"),
        _call(10**12 + 1),
        _call("1E+13"),
        _call("0." + "0" * 40 + "1"),  # 41 places
        _call("1.5E-40"),  # 41 places too
        _call("0E-1001"),  # more places as written than PostgreSQL is asked to keep
        _call("0E-20000"),  # more than it can keep
        _call("0x10"),
        _call("1,5"),
        _call(True),
    ],
    ids=repr,
)
def test_the_schema_and_the_model_refuse_the_same_costs(payload: dict[str, object]) -> None:
    assert not _model_accepts(payload)
    assert not _schema_accepts(payload)


def _priced(rate: object) -> dict[str, object]:
    return _call("0.5") | {
        "price": {"layer": "override", "data_version": "v", "rates": {"in": rate}}
    }


@pytest.mark.parametrize(
    "payload",
    [
        _call("0.5") | {"occurred_at": "2016-12-31T23:59:60Z"},  # a leap second
        _call("0.5") | {"occurred_at": "2026-12-01T12:00:00+01"},  # an offset of hours only
        _call("0.5") | {"occurred_at": "0000-12-01T12:00:00Z"},  # no year 0 in Python
        _priced("2.5/M"),
        _priced("NaN"),
        _priced(""),
    ],
    ids=repr,
)
def test_what_the_model_refuses_the_schema_refuses_too(payload: dict[str, object]) -> None:
    """Ajv's ``date-time`` format (the Node.js example's) admits these times, and the
    schema took any string for a rate: another language's producer published events that
    every consumer dead-lettered."""
    assert not _model_accepts(payload)
    assert not _schema_accepts(payload)


@pytest.mark.parametrize(
    "payload",
    [
        _call("0.5") | {"occurred_at": "2026-12-01T12:00:00.123456789+05:30"},
        _call("0.5") | {"occurred_at": "2026-12-01T12:00:00-00:00"},
        _priced("2.5E-6"),
        _priced("0.000075"),
        _priced(2.5),
        _priced(0),
    ],
    ids=repr,
)
def test_times_and_rates_in_the_wire_form_are_accepted_by_both(
    payload: dict[str, object],
) -> None:
    assert _model_accepts(payload)
    assert _schema_accepts(payload)


@pytest.mark.parametrize(
    "payload",
    [
        _call(0.0125),  # a JSON fraction: a binary float on the way
        _call("1e3"),
        _call(" 1.5"),
        _call("+1"),
        _call("1_000"),
        _call(".5"),
        _call("00.5"),
        _call("0.0125", "no price"),  # a cost and a reason
    ],
    ids=repr,
)
def test_lax_forms_the_model_reads_are_not_the_wire_form(payload: dict[str, object]) -> None:
    """Python consumers still read them (events a lax producer already sent); the schema
    holds other producers to what every consumer reads exactly."""
    assert _model_accepts(payload)
    assert not _schema_accepts(payload)


@given(
    coefficient=st.integers(0, 10**45).filter(lambda c: c % 10 or not c),
    exponent=st.integers(-48, 14),
)
def test_any_decimal_cost_gets_the_same_verdict_from_the_schema_and_the_model(
    coefficient: int, exponent: int
) -> None:
    """Every cost ``str(Decimal)`` may write, as Python producers write it. (A coefficient
    with trailing zeros the model drops before counting places, which the schema cannot.)"""
    cost = str(Decimal(f"{coefficient}E{exponent}"))  # exact: scaleb would round
    for payload in (_call(cost), _call(cost) | {"type": "UsageRepriced"}):
        if payload["type"] == "UsageRepriced":
            payload = payload | {"schema_version": 1, "corrects": _CALL["event_id"], "reason": "x"}
            del payload["usage"]
            schema = json.loads((DOCS / "UsageRepriced.v1.json").read_text())
        else:
            schema = RECORDED
        assert _schema_accepts(payload, schema) == _model_accepts(payload), cost


@pytest.mark.parametrize("missing", ["type", "schema_version"])
def test_what_the_reader_dispatches_on_is_required(missing: str) -> None:
    """Without ``schema_version`` the reader takes a version 1 event, upcast: not what a
    version 2 producer meant."""
    payload = _call("0.0125")
    del payload[missing]
    assert not _schema_accepts(payload)


def test_every_cost_a_python_producer_writes_validates() -> None:
    """As the tracker computes them (token counts times rates): small ones and zeros come
    out in scientific notation."""
    rates = (Decimal("0.00000015"), Decimal("2.5E-6"), Decimal("0.000075"))
    for tokens in (0, 1, 7, 1000, 10**9):
        for rate in rates:
            written = json.loads(encode(usage_event(cost=str(tokens * rate))))
            assert _schema_accepts(written), written["cost"]
    unpriced = json.loads(encode(usage_event(cost=None)))
    assert _schema_accepts(unpriced), unpriced
