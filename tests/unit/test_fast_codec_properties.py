"""Property: the fast decoder (projections/engine/fast_codec.py) and the pydantic contract
never drift.

Both get the same payloads: valid ones generated from the contract in its wire form, and
mutations of them. Whatever the fast decoder accepts, pydantic accepts with identical
values and the same canonical document; every valid wire-form payload is accepted by
both; and whatever pydantic accepts that the fast decoder declines is a lax form (or an
older version) of an event whose canonical form the fast decoder accepts.
"""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from mutations import json_values, mutated_payloads
from pydantic import BaseModel

from events import DecodeError, Event, UsageRecorded, UsageRepriced, canonical, decode, encode
from events.usage import MAX_AUDIO_SECONDS, MAX_COST, MAX_DECIMAL_PLACES, MAX_IMAGES, MAX_TOKENS
from projections.engine.fast_codec import decode_fast, document

Json = Any

# -- valid payloads, in the contract's wire form -----------------------------------------------

_CHARACTERS = st.characters(codec="utf-8", exclude_characters="\x00")
"""Any character a valid event may hold: a NUL is refused (``events.nul``)."""
_text = st.text(_CHARACTERS, max_size=12)


def _bounded_text(low: int, high: int) -> st.SearchStrategy[str]:
    """Lengths anywhere in range, the bounds themselves often."""
    return st.one_of(
        st.text(_CHARACTERS, min_size=low, max_size=min(high, 20)),
        st.sampled_from([low, high]).flatmap(
            lambda n: st.text(st.sampled_from("aé€😀"), min_size=n, max_size=n)
        ),
    )


@st.composite
def _decimal_text(draw: st.DrawFn, high: int) -> str | int:
    """A decimal in [0, high] with up to 40 places, written in any form pydantic reads
    the same way: plain, trailing zeros, exponents, signs, or a JSON integer."""
    places = draw(st.integers(0, MAX_DECIMAL_PLACES))
    units = draw(st.integers(0, high * 10**places) | st.sampled_from([0, high * 10**places]))
    value = Decimal(f"{units}E-{places}")
    form = draw(st.sampled_from(["plain", "zeros", "exponent", "signed", "integer", "short"]))
    if form == "zeros":
        return f"{value:f}" + ("" if places else ".") + "0" * draw(st.integers(0, 45))
    if form == "exponent":
        return f"{units}e-{places}" if places else f"{units}E+0"
    if form == "signed":
        return f"+{value:f}" if units else "-0"
    if form == "integer" and places == 0:
        return units
    if form == "short" and 0 < value < 1:
        return f"{value:f}"[1:]  # ".5"
    return str(value)


@st.composite
def _time_text(draw: st.DrawFn) -> str:
    moment = draw(st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)))
    digits = draw(st.integers(0, 9))
    fraction = f".{moment.microsecond:06d}{'7' * max(0, digits - 6)}"[: digits + 1]
    minutes = draw(st.integers(-(24 * 60 - 1), 24 * 60 - 1) | st.just(0))
    zone = draw(st.sampled_from(["Z", f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}"]))
    if zone != "Z":
        zone += f":{abs(minutes) % 60:02d}"
    return moment.replace(microsecond=0).isoformat() + (fraction if digits else "") + zone


def _uuid_text() -> st.SearchStrategy[str]:
    return st.builds(
        lambda u, form: {"plain": str(u), "upper": str(u).upper(), "hex": u.hex}[form],
        st.uuids(),
        st.sampled_from(["plain", "upper", "hex"]),
    )


def _optional(draw: st.DrawFn, payload: dict[str, Json], key: str, value: Any) -> None:
    """Absent, null (where the contract allows it: every optional field with None
    default) or the value."""
    choice = draw(st.sampled_from(["absent", "value", "value", "null"]))
    if choice == "value":
        payload[key] = draw(value)
    elif choice == "null":
        payload[key] = None


def _defaulted(draw: st.DrawFn, payload: dict[str, Json], key: str, value: Any) -> None:
    if draw(st.booleans()):
        payload[key] = draw(value)


_COUNT = st.integers(0, MAX_TOKENS) | st.sampled_from([0, 1, MAX_TOKENS])


@st.composite
def _producer(draw: st.DrawFn) -> dict[str, Json]:
    producer: dict[str, Json] = {"service": draw(_bounded_text(0, 200))}
    _optional(draw, producer, "host", _bounded_text(0, 255))
    _optional(draw, producer, "pid", st.integers(-(2**63), 2**63 - 1))
    _defaulted(draw, producer, "library_version", _text)
    return producer


@st.composite
def _usage(draw: st.DrawFn) -> dict[str, Json]:
    usage: dict[str, Json] = {}
    for key in (
        "input_uncached",
        "input_cache_read",
        "input_cache_write",
        "output_text",
        "output_reasoning",
        "embedding_tokens",
    ):
        _defaulted(draw, usage, key, _COUNT)
    _defaulted(draw, usage, "audio_seconds", _decimal_text(MAX_AUDIO_SECONDS))
    images = st.fixed_dictionaries(
        {
            "count": st.integers(1, MAX_IMAGES) | st.sampled_from([1, MAX_IMAGES]),
            "size": _bounded_text(0, 32),
        },
        optional={"quality": _bounded_text(0, 32)},
    )
    _optional(draw, usage, "images", images)
    return usage


@st.composite
def _price(draw: st.DrawFn) -> dict[str, Json]:
    price: dict[str, Json] = {
        "layer": draw(st.sampled_from(["override", "supplement", "genai-prices"])),
        "data_version": draw(_text),
    }
    _optional(draw, price, "effective_from", st.dates().map(date.isoformat))
    _defaulted(draw, price, "rates", st.dictionaries(_text, _decimal_text(10**6), max_size=3))
    return price


@st.composite
def _costed(draw: st.DrawFn, payload: dict[str, Json]) -> None:
    """The cost fields: priced, or unpriced with a reason."""
    if draw(st.booleans()):
        payload["cost"] = draw(_decimal_text(MAX_COST))
        _optional(draw, payload, "unpriced_reason", _text)
    else:
        _optional(draw, payload, "cost", st.none())
        payload["unpriced_reason"] = draw(_text.filter(bool))
    _defaulted(draw, payload, "currency", st.just("USD"))
    _optional(draw, payload, "price", _price())


@st.composite
def _envelope(draw: st.DrawFn, event_type: type[Event]) -> dict[str, Json]:
    payload: dict[str, Json] = {"type": event_type.__name__, "event_id": draw(_uuid_text())}
    _defaulted(draw, payload, "schema_version", st.just(event_type.SCHEMA_VERSION))
    payload["occurred_at"] = draw(_time_text())
    _optional(draw, payload, "producer", _producer())
    draw(_costed(payload))
    payload["provider"] = draw(_bounded_text(1, 100))
    payload["model"] = draw(_bounded_text(1, 200))
    _optional(draw, payload, "user_id", _bounded_text(0, 200))
    _optional(draw, payload, "project_id", _bounded_text(0, 200))
    return payload


@st.composite
def recorded_payloads(draw: st.DrawFn) -> dict[str, Json]:
    payload = draw(_envelope(UsageRecorded))
    _defaulted(draw, payload, "kind", st.sampled_from(["chat", "embedding", "image", "audio"]))
    payload["usage"] = draw(_usage())
    _defaulted(draw, payload, "tags", st.dictionaries(_text, _text, max_size=3))
    _optional(draw, payload, "reservation_id", _text)
    _optional(draw, payload, "estimated_reason", _bounded_text(0, 500))
    return payload


@st.composite
def repriced_payloads(draw: st.DrawFn) -> dict[str, Json]:
    payload = draw(_envelope(UsageRepriced))
    payload["corrects"] = draw(_uuid_text())
    payload["reason"] = draw(_bounded_text(0, 500))
    return payload


valid_payloads = recorded_payloads() | repriced_payloads()


# -- mutations aimed at each rule --------------------------------------------------------------

_EDGES = [
    None,
    True,
    -1,
    1.5,
    "5",
    5.0,
    [],
    {},
    "",
    "x" * 501,
    "NaN",
    "Infinity",
    "-Infinity",
    "sNaN",
    "1e400",
    "0." + "0" * 40 + "1",
    "0." + "1" * 41,
    "1." + "0" * 41,
    "1E-41",
    "1E-40",
    "0E-1000",  # written places: at most MAX_WRITTEN_PLACES, trailing zeros included
    "0E-1001",
    "1." + "0" * 1001,
    "0E+99999",
    "\udc00",  # an unpaired surrogate: no character
    "\ud83d\ude00",
    str(MAX_COST),
    f"{MAX_COST}.{'0' * 39}1",
    MAX_TOKENS + 1,
    MAX_TOKENS,
    0,
    -0,
    "-0",
    " 1.5",
    "1_000",
    "\u0661",  # an Arabic-Indic digit one: Python's Decimal reads it
    "2026-01-01T00:00:00",
    "2026-01-01T00:00:00z",
    "2026-01-01 00:00:00Z",
    "2026-01-01T00:00Z",
    "2026-01-01T24:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-01-01T23:59:60Z",
    "2026-01-01T00:00:00+24:00",
    "2026-01-01T00:00:00+0100",
    "0001-01-01T00:00:00+00:01",
    "9999-12-31T23:59:59-00:01",
    1767225600,
    "{01234567-89ab-7def-8123-456789abcdef}",
    "urn:uuid:01234567-89ab-7def-8123-456789abcdef",
    "2026-01-01",
    "USD ",
    "UsageRecorded",
    "UsageRepriced",
    1,
    2,
    3,
]


@st.composite
def _aimed(draw: st.DrawFn) -> bytes:
    """A valid payload with one field anywhere set to an edge value, dropped, or
    duplicated with another value (the last one counts for both decoders)."""
    payload = draw(valid_payloads)
    parent, key = payload, draw(st.sampled_from(sorted(payload)))
    while isinstance(parent[key], dict) and parent[key] and draw(st.booleans()):
        parent, key = parent[key], draw(st.sampled_from(sorted(parent[key])))
    operation = draw(st.sampled_from(["edge", "edge", "edge", "drop", "duplicate", "extra"]))
    if operation == "drop":
        del parent[key]
    elif operation == "extra":
        parent[draw(st.sampled_from(["extra", key + "_", "Type", "\udc00"]))] = draw(json_values)
    elif operation == "edge":
        parent[key] = draw(st.sampled_from(_EDGES) | json_values)
    # an unpaired surrogate written raw is no UTF-8: sent as such bytes, as a producer might
    data = json.dumps(payload, ensure_ascii=draw(st.booleans())).encode(errors="surrogatepass")
    if operation == "duplicate":
        duplicate = json.dumps({key: draw(st.sampled_from(_EDGES))})[1:-1].encode()
        data = data[:-1] + b"," + duplicate + b"}"
    return data


# -- the properties ----------------------------------------------------------------------------


def _same(fast: Any, model: Any, path: str = "") -> None:
    """Identical values: same fields, and each value of the same kind and exactly equal
    (a decimal's digits and exponent, a time's instant and zone)."""
    if isinstance(model, BaseModel):
        for name in type(model).model_fields:
            _same(getattr(fast, name), getattr(model, name), f"{path}.{name}")
    elif isinstance(model, dict):
        assert fast.keys() == model.keys(), path
        for key in model:
            _same(fast[key], model[key], f"{path}.{key}")
    elif isinstance(model, Decimal):
        assert isinstance(fast, Decimal) and fast.as_tuple() == model.as_tuple(), path
    elif isinstance(model, datetime):
        assert isinstance(fast, datetime) and fast == model and fast.utcoffset() is not None
        assert fast.tzinfo == model.tzinfo, path
    else:
        assert type(fast) is type(model) and fast == model, path


def _pydantic(data: bytes) -> Event | None:
    try:
        return decode(data)
    except DecodeError:
        return None


def _agree(data: bytes) -> tuple[Any, Event | None]:
    """The common property of every payload; both verdicts."""
    fast, event = decode_fast(data), _pydantic(data)
    if fast is not None:
        assert event is not None, "the fast decoder accepted what pydantic refuses"
        assert type(event) is fast.MODEL
        _same(fast, event)
        assert document(fast) == canonical(event)
    elif isinstance(event, UsageRecorded | UsageRepriced):
        # a lax form or an older version: its canonical form takes the fast path
        again = decode_fast(encode(event))
        assert again is not None, "the fast decoder declined a canonical event"
        _same(again, event)
    return fast, event


def _count(verdicts: tuple[Any, Event | None]) -> None:
    """For ``--hypothesis-show-statistics``: how often each pair of verdicts came up."""
    fast, event = ("declined" if v is None else "accepted" for v in verdicts)
    hypothesis_event(f"fast {fast}, pydantic {event}")


_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(valid_payloads, st.booleans())
def test_a_valid_payload_is_accepted_by_both_with_identical_values(
    payload: dict[str, Json], ascii_only: bool
) -> None:
    verdicts = _agree(json.dumps(payload, ensure_ascii=ascii_only).encode())
    _count(verdicts)
    assert None not in verdicts


@_SETTINGS
@given(_aimed())
@example(b'{"type":"UsageRepriced","event_id":"01234567-89ab-7def-8123-456789abcdef"}')
def test_a_payload_off_by_one_rule_gets_the_same_verdict_from_both(data: bytes) -> None:
    _count(_agree(data))


@_SETTINGS
@given(st.lists(valid_payloads, min_size=1, max_size=1).flatmap(mutated_payloads))
@example(b'{"type": "\x80UsageRepriced"}')
def test_a_mutated_payload_gets_the_same_verdict_from_both(data: bytes) -> None:
    _count(_agree(data))


def _full(event_type: type[Event]) -> dict[str, Json]:
    """A payload with every optional field present."""
    usage = {
        "input_uncached": 1,
        "input_cache_read": 2,
        "input_cache_write": 3,
        "output_text": 4,
        "output_reasoning": 5,
        "embedding_tokens": 6,
        "audio_seconds": "1.5",
        "images": {"count": 2, "size": "1024x1024", "quality": "hd"},
    }
    payload: dict[str, Json] = {
        "type": event_type.__name__,
        "event_id": "01234567-89ab-7def-8123-456789abcdef",
        "schema_version": event_type.SCHEMA_VERSION,
        "occurred_at": "2026-01-01T12:00:00.5+01:00",
        "producer": {"service": "s", "host": "h", "pid": 1, "library_version": "1"},
        "cost": "0.00425",
        "currency": "USD",
        "price": {
            "layer": "override",
            "data_version": "v1",
            "effective_from": "2026-01-01",
            "rates": {"input": "2.5"},
        },
        "unpriced_reason": "r",
        "provider": "openai",
        "model": "gpt-4o",
        "user_id": "u",
        "project_id": "p",
    }
    if event_type is UsageRecorded:
        extra = {"kind": "chat", "usage": usage, "tags": {"team": "search"}}
        return payload | extra | {"reservation_id": "r-1", "estimated_reason": "e"}
    return payload | {"corrects": "01234567-89ab-7def-8123-456789abcdee", "reason": "fix"}


def _paths(node: dict[str, Json], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for key, value in node.items():
        found.append((*prefix, key))
        if isinstance(value, dict):
            found += _paths(value, (*prefix, key))
    return found


def _changed(payload: dict[str, Json], path: tuple[str, ...], value: Json) -> bytes:
    changed = json.loads(json.dumps(payload))
    parent = changed
    for key in path[:-1]:
        parent = parent[key]
    if value is _DROP:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return json.dumps(changed).encode()


_DROP = object()


def test_every_edge_value_at_every_field_gets_the_same_verdict_from_both() -> None:
    """Exhaustive where hypothesis would rarely land: each edge value (and dropping the
    field) at each field of a payload with every optional field present."""
    for event_type in (UsageRecorded, UsageRepriced):
        payload = _full(event_type)
        assert decode_fast(json.dumps(payload).encode()) is not None
        for path in _paths(payload):
            for value in [_DROP, *_EDGES]:
                _agree(_changed(payload, path, value))


def test_the_unpriced_rule_binds_the_fast_decoder_too() -> None:
    payload = {
        "type": "UsageRepriced",
        "event_id": str(uuid.uuid4()),
        "occurred_at": "2026-01-01T00:00:00Z",
        "corrects": str(uuid.uuid4()),
        "provider": "openai",
        "model": "gpt-4o",
        "reason": "price fix",
    }
    for unpriced in ({}, {"cost": None}, {"cost": None, "unpriced_reason": ""}):
        data = json.dumps(payload | unpriced).encode()
        assert decode_fast(data) is None and _pydantic(data) is None
    explained = json.dumps(payload | {"cost": None, "unpriced_reason": "no price"}).encode()
    assert decode_fast(explained) is not None and _pydantic(explained) is not None
