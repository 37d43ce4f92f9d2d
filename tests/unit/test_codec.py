"""The event contract on the wire: round trips, upcasting, clear rejections."""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from events import (
    AlertRule,
    BudgetPolicy,
    DecodeError,
    PolicySet,
    Producer,
    TimeBounds,
    Usage,
    UsageRecorded,
    UsageRepriced,
    canonical,
    decode,
    encode,
    headers_for,
    utc_now,
)
from events.envelope import new_event_id
from events.policy import MAX_LIMIT
from events.usage import MAX_COST, MAX_TOKENS
from projections.engine.fast_codec import decode_fast
from projections.engine.projection import Applied


def event(**changes: object) -> UsageRecorded:
    fields: dict[str, object] = {
        "occurred_at": utc_now(),
        "provider": "openai",
        "model": "gpt-4o",
        "usage": Usage(input_uncached=300, input_cache_read=200, output_text=250),
        "cost": Decimal("0.00425"),
    }
    return UsageRecorded.model_validate(fields | changes)


def test_round_trip_keeps_every_field_exactly() -> None:
    original = event(tags={"team": "search"}, user_id="u1")
    assert decode(encode(original)) == original


def test_cost_travels_as_a_string_so_no_float_rounding() -> None:
    payload = json.loads(encode(event(cost=Decimal("0.1000000000000000055511151231257827"))))
    assert payload["cost"] == "0.1000000000000000055511151231257827"


def test_the_only_header_is_the_message_id() -> None:
    e = event()
    assert headers_for(e) == {"Nats-Msg-Id": str(e.event_id)}


def test_version_1_is_upcast_to_non_overlapping_classes() -> None:
    v1 = {
        "type": "UsageRecorded",
        "schema_version": 1,
        "event_id": str(new_event_id()),
        "occurred_at": "2026-03-01T10:00:00+02:00",
        "provider": "anthropic",
        "model": "claude-sonnet-4",
        "input_tokens": 1000,
        "cached_tokens": 300,
        "output_tokens": 50,
        "cost": 0.0042,
    }
    upcast = decode(json.dumps(v1).encode())
    assert isinstance(upcast, UsageRecorded)
    assert upcast.usage == Usage(input_uncached=700, input_cache_read=300, output_text=50)
    assert upcast.cost == Decimal("0.0042")
    assert upcast.occurred_at == datetime.fromisoformat("2026-03-01T08:00:00+00:00")


def test_an_event_without_id_is_rejected_rather_than_given_a_random_one() -> None:
    payload = json.loads(encode(event()))
    del payload["event_id"]
    with pytest.raises(DecodeError, match="event_id: required"):
        decode(json.dumps(payload).encode())


def version_1(**fields: object) -> dict[str, object]:
    """A schema-version-1 usage event as an old producer sent it."""
    return {
        "event_id": str(new_event_id()),
        "type": "UsageRecorded",
        "schema_version": 1,
        "occurred_at": "2026-03-01T10:00:00Z",
        "provider": "x",
        "model": "y",
        **fields,
    }


def test_version_1_without_cost_becomes_explicitly_unpriced() -> None:
    upcast = decode(json.dumps(version_1(input_tokens=1)).encode())
    assert isinstance(upcast, UsageRecorded)
    assert upcast.cost is None
    assert upcast.unpriced_reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"type": "Nope"}', "unknown event type 'Nope'"),
        (b'{"type": "UsageRecorded", "schema_version": 9}', "newer than this reader"),
    ],
)
def test_malformed_payloads_say_why(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode(payload)


def test_a_validation_failure_names_the_field() -> None:
    bad = json.loads(encode(event()))
    bad["usage"]["output_text"] = -5
    with pytest.raises(DecodeError, match=r"usage\.output_text"):
        decode(json.dumps(bad).encode())


def test_a_v2_body_without_its_version_is_read_as_v2_valid_or_not() -> None:
    """Not upcast as v1 (which would make every count 0): a valid one decodes as with
    its version, by either decoder; an invalid one is refused for what is wrong."""
    original = event()
    body = json.loads(encode(original))
    del body["schema_version"]
    assert decode(json.dumps(body).encode()) == original
    fast = decode_fast(json.dumps(body).encode())
    assert fast is not None and Applied.of_fast(1, fast).event == original
    body["usage"]["output_text"] = -1
    with pytest.raises(DecodeError, match=r"usage\.output_text"):
        decode(json.dumps(body).encode())
    body["usage"]["output_text"] = 1
    body["schema_version"] = 1
    with pytest.raises(DecodeError, match="v1 event has no usage object"):
        decode(json.dumps(body).encode())


# the last one's 5 is an Arabic-Indic digit
@pytest.mark.parametrize(
    "offset", ["+00:60", "-00:60", "+00:99", "+05:75", "+24:00", "+0\u0665:00"]
)
def test_an_offset_out_of_range_is_refused_by_both_decoders(offset: str) -> None:
    body = json.loads(encode(event()))
    body["occurred_at"] = "2026-01-01T00:00:00" + offset
    payload = json.dumps(body).encode()
    with pytest.raises(DecodeError, match="occurred_at"):
        decode(payload)
    assert decode_fast(payload) is None


def test_naive_event_time_is_rejected() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        event(occurred_at=datetime(2026, 1, 1))


def test_an_unpriced_event_must_say_why() -> None:
    with pytest.raises(ValidationError, match="unpriced_reason"):
        event(cost=None)


def test_event_ids_are_time_ordered_uuid7() -> None:
    first, second = new_event_id(), new_event_id()
    assert first.version == 7
    assert str(first)[:8] <= str(second)[:8]


def test_event_ids_take_their_random_bits_from_the_os(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reservation id settles a hold: it must not be predictable from earlier ids, as
    ids of a seeded generator are."""
    monkeypatch.setattr(os, "urandom", lambda n: bytes(range(1, n + 1)))
    made = new_event_id()
    told = int.from_bytes(bytes(range(1, 11)), "big")
    assert (made.version, made.variant) == (7, uuid.RFC_4122)
    assert made.int & ((1 << 62) - 1) == told & ((1 << 62) - 1)
    assert (made.int >> 64) & 0xFFF == (told >> 62) & 0xFFF


def test_a_tag_named_event_id_does_not_pass_for_the_events_id() -> None:
    """The decoder looks at the decoded event, not at the bytes: without a top-level
    event_id the event is refused on every read, never given a new id each time."""
    payload = json.loads(encode(event(tags={"event_id": str(new_event_id())})))
    del payload["event_id"]
    data = json.dumps(payload).encode()
    for _ in range(2):
        with pytest.raises(DecodeError, match="event_id: required at the top level"):
            decode(data)


def test_an_upcast_of_a_malformed_older_version_is_a_decode_error() -> None:
    # json.loads reads 1e400 as Infinity
    v1 = version_1(input_tokens=1e400, cost={"not": "a number"})
    with pytest.raises(DecodeError, match=r"cannot upcast: ValueError: input_tokens: .* finite"):
        decode(json.dumps(v1).encode())
    del v1["input_tokens"]
    with pytest.raises(DecodeError, match="cannot upcast: InvalidOperation"):
        decode(json.dumps(v1).encode())


@pytest.mark.parametrize("count", [1.7, "1.7", [1]])
@pytest.mark.parametrize("name", ["input_tokens", "cached_tokens", "output_tokens"])
def test_a_version_1_count_that_is_no_integer_is_refused_not_cut_short(
    name: str, count: object
) -> None:
    """``int()`` read 1.7 tokens as 1: the event was counted with other usage than it said."""
    with pytest.raises(DecodeError, match=f"cannot upcast: ValueError: {name}: "):
        decode(json.dumps(version_1(**{"input_tokens": 2, name: count})).encode())


def test_a_version_1_count_in_a_lax_form_is_read_as_the_models_read_one() -> None:
    upcast = decode(json.dumps(version_1(input_tokens="7", output_tokens=3.0)).encode())
    assert isinstance(upcast, UsageRecorded)
    assert (upcast.usage.input_uncached, upcast.usage.output_text) == (7, 3)


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"tags": {"team\udc00": "a"}}, "tags: a name in it"),
        ({"tags": {"team": "\ud800"}}, "tags.team"),
        ({"unpriced_reason": "\udfff"}, "unpriced_reason"),
        (
            {"price": {"layer": "override", "data_version": "v", "rates": {"\udc00": "1"}}},
            "price.rates: a name in it",
        ),
    ],
)
def test_an_unpaired_surrogate_is_refused_saying_where(
    changes: dict[str, object], where: str
) -> None:
    """Python's json reads ``\\udc00``, which no UTF-8 carries: pydantic let it through
    (in a name, or a string without bounds), and the event could neither be encoded again
    nor stored."""
    data = json.dumps(json.loads(encode(event())) | changes).encode()
    with pytest.raises(DecodeError, match=f"^{re.escape(where)} holds an unpaired surrogate"):
        decode(data)


@pytest.mark.parametrize("changes", [{"tags": {"team\udc00": "a"}}, {"model": "gpt\ud800"}])
def test_an_unpaired_surrogate_sent_unescaped_is_refused_as_no_utf_8(
    changes: dict[str, object],
) -> None:
    """Its bytes are no UTF-8: the model's parser refused them, and the slow path's
    json.loads of bytes read them into the string (surrogatepass), so the event was
    accepted where the fast decoder refuses it (found by the fast codec's property test)."""
    payload = json.dumps(json.loads(encode(event())) | changes, ensure_ascii=False)
    with pytest.raises(DecodeError, match=r"^not JSON: not UTF-8 text: "):
        decode(payload.encode(errors="surrogatepass"))


def test_an_event_after_a_byte_order_mark_is_read_as_before() -> None:
    """json.loads of bytes skips a UTF-8 BOM: an event a producer sent so, already in the
    log, must not become a dead letter at the next rebuild."""
    sent = event()
    assert decode(b"\xef\xbb\xbf" + encode(sent)) == sent


def test_a_surrogate_pair_and_the_text_of_an_escape_are_characters() -> None:
    payload = json.loads(encode(event()))
    tags = {"emoji": "\U0001f600", "text": "\\ud800"}  # a pair; a backslash, then ud800
    assert decode(json.dumps(payload | {"tags": tags}).encode()).tags == tags


def test_nesting_deeper_than_the_parser_goes_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="not JSON"):
        decode(b"[" * 100_000 + b"]" * 100_000)


def test_a_correction_repeats_an_old_time_so_only_its_skew_is_bounded() -> None:
    bounds = TimeBounds(max_event_age=timedelta(days=1))
    now = utc_now()
    old = now - timedelta(days=30)
    correction = UsageRepriced(
        occurred_at=old, corrects=new_event_id(), provider="p", model="m", cost=0, reason="fix"
    )
    assert bounds.violation(UsageRepriced, correction.occurred_at, now) is None
    assert "(max_event_age)" in str(bounds.violation(UsageRecorded, old, now))
    ahead = now + timedelta(minutes=6)
    assert "(max_clock_skew)" in str(bounds.violation(UsageRepriced, ahead, now))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cost": Decimal(MAX_COST + 1)}, "less than or equal to 1000000000000"),
        ({"cost": Decimal("1E-41")}, "no more than 40 decimal places"),
        ({"cost": Decimal("-0.01")}, "greater than or equal to 0"),
        ({"usage": {"audio_seconds": "1E-41"}}, "no more than 40 decimal places"),
        # PostgreSQL keeps at most 16,383 places: 0E-20000 was refused by the database alone
        ({"cost": Decimal("0E-1001")}, "at most 1000 digits after the point as written"),
        ({"usage": {"audio_seconds": "1." + "0" * 1001}}, "at most 1000 digits after the"),
        ({"usage": {"output_text": MAX_TOKENS + 1}}, "less than or equal to 1000000000000"),
        # indexed by the ledger: a longer one would pass PostgreSQL's index row size
        ({"reservation_id": "r" * 101}, "at most 100 characters"),
    ],
)
def test_the_contracts_maxima_are_clear_errors(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        event(**changes)
    event(cost=Decimal(MAX_COST), usage={"audio_seconds": "1E-40", "output_text": MAX_TOKENS})


def test_a_policy_limit_is_bounded_so_every_threshold_of_it_can_be_counted() -> None:
    """An unbounded limit (2E+131072) overflowed PostgreSQL's numeric in the alert
    evaluator's statement, failing every batch of usage it watched."""
    with pytest.raises(ValidationError, match="less than or equal to 1000000000000000"):
        BudgetPolicy(name="huge", limit_amount=Decimal("2E+131072"))
    with pytest.raises(ValidationError, match="no more than 40 decimal places"):
        BudgetPolicy(name="fine", limit_amount=Decimal("1E-41"))
    assert BudgetPolicy(name="max", limit_amount=Decimal(MAX_LIMIT)).limit_amount == MAX_LIMIT


@pytest.mark.parametrize(
    ("percent", "message"),
    [
        # 1E-17000 % of a limit is a threshold of 17,000 places: PostgreSQL's numeric holds
        # 16,383, so the alert evaluator dead-lettered the policy (no alert ever raised for
        # it) while the enforcer enforced it; and an alert's percent is read as numeric
        ("1E-17000", "no more than 40 decimal places"),
        ("80." + "0" * 17000, "at most 1000 digits after the point as written"),
    ],
)
def test_a_percent_of_a_limit_is_bounded_so_its_threshold_can_be_counted(
    percent: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=f"(?s)soft_limit_percent.*{message}"):
        BudgetPolicy(name="p", limit_amount=1, soft_limit_percent=Decimal(percent))
    with pytest.raises(ValidationError, match=f"(?s)threshold_percent.*{message}"):
        AlertRule(name="r", threshold_percent=Decimal(percent))
    finest = Decimal("1E-40")
    assert BudgetPolicy(name="p", limit_amount=1, soft_limit_percent=finest).soft_limit_percent
    assert AlertRule(name="r", threshold_percent=finest).threshold_percent == finest


def test_no_id_at_any_depth_is_made_anew_on_read() -> None:
    """A policy without its policy_id would become another policy on every read."""
    policy = PolicySet(
        occurred_at=utc_now(), policy=BudgetPolicy(policy_id="p", name="p", limit_amount=1)
    )
    payload = json.loads(encode(policy))
    del payload["policy"]["policy_id"]
    with pytest.raises(DecodeError, match=r"policy\.policy_id: required on the wire"):
        decode(json.dumps(payload).encode())


def test_a_producer_that_names_only_its_service_is_decoded_as_it_said() -> None:
    """Other languages publish by the JSON Schema, which requires only the service: host
    and pid stay unknown, never this reader's (a replay elsewhere would read others)."""
    payload = json.loads(encode(event()))
    payload["producer"] = {"service": "node-app"}
    decoded = decode(json.dumps(payload).encode())
    assert decoded.producer == Producer(service="node-app", host=None, pid=None)
    assert Producer.here("s").pid == os.getpid()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"tags": {"team": "a\x00b"}}, "tags.team"),
        ({"tags": {"te\x00am": "a"}}, "tags: a name in it"),
        ({"user_id": "nul\x00user"}, "user_id"),
        ({"model": "gpt\x00"}, "model"),
    ],
)
def test_a_nul_character_is_refused_at_the_producer_and_at_the_consumer(
    changes: dict[str, object], field: str
) -> None:
    """PostgreSQL stores no NUL: an event holding one would count in some projections and
    not in others, so no producer publishes it and every consumer dead-letters it."""
    nul = event(**changes)
    with pytest.raises(ValueError, match=f"UsageRecorded {re.escape(field)} holds a NUL"):
        encode(nul)
    data = canonical(nul).encode()
    with pytest.raises(DecodeError, match=f"^{re.escape(field)} holds a NUL"):
        decode(data)
    assert decode_fast(data) is None  # the fast path leaves it to ``decode``


def test_the_text_of_an_escaped_backslash_before_u0000_is_no_nul() -> None:
    text = event(tags={"note": "\\u0000"})
    assert decode(encode(text)) == text
