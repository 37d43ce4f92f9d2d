"""An SSE body split into its events as its bytes arrive, however they are cut: each
event's own bytes (so the one the instrumentation asked for can be left out of what the
caller reads, the rest passed byte for byte), and its name and data."""

from __future__ import annotations

import pytest

from budget.instrumentation.sse_events import EventSplitter, event_fields

BODY = (
    b'event: message_start\r\ndata: {"a": 1}\r\n\r\n'
    b": a comment\n\n"
    b'data: {"b":\ndata: 2}\n\n'
    b"data: [DONE]\r\r"
    b"data: cut"
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(BODY)])
def test_events_come_whole_however_the_body_is_cut(size: int) -> None:
    splitter = EventSplitter()
    events = []
    for start in range(0, len(BODY), size):
        events += splitter.feed(BODY[start : start + size])
    rest = splitter.rest()
    assert b"".join(events) + rest == BODY
    assert [event_fields(event) for event in events] == [
        ("message_start", '{"a": 1}'),
        (None, ""),
        (None, '{"b":\n2}'),
        (None, "[DONE]"),
    ]
    assert rest == b"data: cut"  # no blank line ended it: not an event


def test_a_carriage_return_at_a_feeds_end_waits_for_the_next_byte() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: x\r\n\r") == []
    assert splitter.feed(b"\ndata: y\n\n") == [b"data: x\r\n\r\n", b"data: y\n\n"]


def test_data_keeps_line_separators_json_allows() -> None:
    assert event_fields('data: {"t": "a\u2028b"}\n\n'.encode()) == (None, '{"t": "a\u2028b"}')
