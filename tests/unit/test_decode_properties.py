"""Property: any mutation of a valid payload decodes to a valid event or is refused with a
``DecodeError`` and a reason; nothing else escapes the decoder (a consumer turns the
reason into a dead letter and goes on)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from mutations import mutated_payloads, valid_payloads

from events import DecodeError, canonical, decode, encode

PAYLOADS = valid_payloads()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_payloads(PAYLOADS))
def test_a_mutated_payload_is_a_valid_event_or_a_decode_error_with_a_reason(data: bytes) -> None:
    try:
        event = decode(data)
    except DecodeError as exc:
        assert exc.reason.strip()
        return
    assert "event_id" in event.model_fields_set  # never invented on read
    canonical(event)  # what a consumer hands to PostgreSQL
    assert decode(encode(event)) == event
    assert decode(data) == event  # the same event on every read
