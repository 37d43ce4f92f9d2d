"""Keyset cursors come back from clients as any text: what the service issued decodes to
the same position, and anything else is refused as "not our cursor" (a 422 naming the
field), never an error of another kind (which the API would answer with a 500)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from projections.cursors import encode_cursor
from projections.history_pages import Cursor
from services.api.problems import Problem
from services.api.routes.alerts import alert_cursor, alert_position

AT = datetime(2026, 12, 1, 12, 30, tzinfo=UTC)
ID = uuid.UUID("0193a4b2-0000-7000-8000-000000000001")

FOREIGN_HISTORY = [
    "not-a-cursor",
    encode_cursor({"s": 1, "t": AT.isoformat(), "e": 1}),  # an id that is not text
    encode_cursor({"s": True, "t": None, "e": None}),  # a bool is no position
    encode_cursor({"s": 1e999, "t": None, "e": None}),
    encode_cursor({"s": 1, "t": 5, "e": str(ID)}),
    encode_cursor({"s": 1, "t": AT.isoformat(), "e": None}),
    encode_cursor({"s": -1, "t": None, "e": None}),
    encode_cursor([1, 2, 3]),
    encode_cursor("[" * 3000),  # valid base64 of JSON text: a string
    encode_cursor(None).replace("bnVsbA", "W1tb" * 1000),  # "[[[" nested past the parser
]
FOREIGN_ALERTS = [
    "nonsense",
    encode_cursor([AT.isoformat(), 1e999, str(ID)]),
    encode_cursor([AT.isoformat(), True, str(ID)]),
    encode_cursor([AT.isoformat(), 1, 5]),
    encode_cursor([5, 1, str(ID)]),
    encode_cursor([AT.isoformat(), 1]),
    encode_cursor({"a": 1, "b": 2, "c": 3}),
    "W1tb" * 2000,  # "[[[" nested past the parser
]


def test_a_history_cursor_round_trips() -> None:
    for cursor in (Cursor(7), Cursor(7, AT, ID)):
        assert Cursor.decode(cursor.encode()) == cursor


@pytest.mark.parametrize("text", FOREIGN_HISTORY)
def test_a_foreign_history_cursor_is_refused_as_such(text: str) -> None:
    with pytest.raises(ValueError, match="not one this service issued"):
        Cursor.decode(text)


def test_an_alert_cursor_round_trips() -> None:
    assert alert_position(alert_cursor((AT, 42, ID))) == (AT, 42, ID)


@pytest.mark.parametrize("text", FOREIGN_ALERTS)
def test_a_foreign_alert_cursor_is_a_422_naming_the_field(text: str) -> None:
    with pytest.raises(Problem) as refused:
        alert_position(text)
    assert refused.value.status == 422
    assert "query.cursor" in str(refused.value.detail)
