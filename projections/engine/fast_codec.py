"""The consumers' hot path: msgspec mirrors of the current ``UsageRecorded`` and
``UsageRepriced``, decoded and turned into their canonical JSON without pydantic.

The pydantic models stay the contract. These structs mirror them field for field, in
the same order, with names, bounds and defaults read from the models; a unit test fails
if the field sets ever differ, and a property test (tests/unit/test_fast_codec_properties.py)
feeds both the same valid and mutated payloads. What the mirror guarantees:

- whatever ``decode_fast`` accepts, ``events.decode`` accepts with identical values, and
  ``document`` is byte for byte ``events.canonical``;
- every current-version payload of these types in the contract's wire form is accepted:
  counts as JSON integers, money as decimal strings (read by Python's ``Decimal``, as
  pydantic reads them) or JSON integers, times as RFC 3339 (``T``, seconds, ``Z`` or
  ``+hh:mm``), ids as UUID strings (hyphenated or 32 hex digits).

Anything else gives None: another type or version, an invalid event, or a lax form that
pydantic also accepts (a count as ``"5"`` or ``5.0``, money as a JSON fraction, a Unix
timestamp, a braced UUID). The caller then runs ``events.decode``, which upcasts, accepts
or says why not, so this module never has to explain a rejection.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, get_args

import msgspec
from annotated_types import Ge, Le, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from events.envelope import RFC3339, Event, Producer
from events.usage import (
    MAX_WRITTEN_PLACES,
    CallKind,
    ImageUsage,
    PriceSource,
    Usage,
    UsageRecorded,
    UsageRepriced,
    WrittenPlaces,
)

__all__ = [
    "FastEvent",
    "FastImageUsage",
    "FastPriceSource",
    "FastProducer",
    "FastUsage",
    "FastUsageRecorded",
    "FastUsageRepriced",
    "decode_fast",
    "document",
]


class _Marker(type):
    """The type of a field msgspec reads through ``_from_wire`` rather than itself (it
    would read a JSON fraction, or a time's seventh fractional digit, other than pydantic
    does). msgspec takes what the hook returns if it is an instance of the field's type:
    a marker claims the plain values its hook makes (Decimals, datetimes), which msgspec
    then writes as pydantic does. Cheaper per value than an ABC's ``register``."""

    claims: type

    def __instancecheck__(cls, value: object) -> bool:
        return isinstance(value, cls.claims)


if TYPE_CHECKING:
    WireDecimal = Decimal
    WireTime = datetime
else:

    class WireDecimal(metaclass=_Marker):
        """A decimal read from a JSON string or integer, exactly as pydantic reads it."""

        claims = Decimal

    class WireTime(metaclass=_Marker):
        """A time read from an RFC 3339 string with an offset (made UTC on decode)."""

        claims = datetime


# The schemas' wire form: an offset's minutes below 60 (fromisoformat would read "+00:60"
# as an hour; pydantic refuses it), ASCII digits only.
_RFC3339 = re.compile(RFC3339)


def _from_wire(kind: type, value: Any) -> Any:
    """msgspec's hook for the types it cannot read as pydantic does. A ValueError makes
    the payload invalid for the fast path (msgspec reports it as a ValidationError)."""
    if kind is WireDecimal:
        # pydantic reads a string with Python's Decimal too; a JSON fraction it reads as
        # a float, which this path leaves to it.
        if type(value) is str or type(value) is int:
            try:
                number = Decimal(value)
            except InvalidOperation:
                raise ValueError("not a number") from None
            if number.is_finite():
                return number
    elif kind is WireTime and type(value) is str and _RFC3339.fullmatch(value):
        return datetime.fromisoformat(value)  # ValueError when a field is out of range
    raise ValueError("not in the fast path's wire form")


# -- rules read from the pydantic models ---------------------------------------------------


def _metadata(model: type[BaseModel], name: str) -> list[Any]:
    """The constraints on a field, including those inside ``Annotated[...] | None``."""
    field = model.model_fields[name]
    found = list(field.metadata)
    for argument in get_args(field.annotation):
        for extra in getattr(argument, "__metadata__", ()):
            found += extra.metadata if isinstance(extra, FieldInfo) else [extra]
    return found


def _meta(model: type[BaseModel], name: str) -> msgspec.Meta:
    """A str or int field's length and bounds, as msgspec checks them."""
    limits: dict[str, int] = {}
    for rule in _metadata(model, name):
        if isinstance(rule, MinLen):
            limits["min_length"] = rule.min_length
        elif isinstance(rule, MaxLen):
            limits["max_length"] = rule.max_length
        elif isinstance(rule, Ge):
            limits["ge"] = int(rule.ge)  # type: ignore[call-overload]
        elif isinstance(rule, Le):
            limits["le"] = int(rule.le)  # type: ignore[call-overload]
    return msgspec.Meta(**limits)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class _DecimalRule:
    """A decimal field's bounds, decimal places and places as written (``WrittenPlaces``),
    which msgspec cannot check."""

    ge: Decimal
    le: Decimal
    places: int

    @classmethod
    def of(cls, model: type[BaseModel], name: str) -> _DecimalRule:
        rules = _metadata(model, name)
        (ge,) = (Decimal(str(r.ge)) for r in rules if isinstance(r, Ge))
        (le,) = (Decimal(str(r.le)) for r in rules if isinstance(r, Le))
        (places,) = (r.decimal_places for r in rules if hasattr(r, "decimal_places"))
        if WrittenPlaces not in rules:
            raise TypeError(f"{model.__name__}.{name}: the mirror expects WrittenPlaces")
        return cls(ge, le, places)

    def check(self, value: Decimal) -> None:
        if not self.ge <= value <= self.le:
            raise ValueError("out of bounds")
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)  # finite: ``_from_wire`` admits no NaN or Infinity
        if exponent < -MAX_WRITTEN_PLACES:
            raise ValueError("too many places as written")
        # Only a value written with more places may have too many once trailing zeros go
        if exponent < -self.places and _decimal_places(value) > self.places:
            raise ValueError("too many decimal places")


def _decimal_places(value: Decimal) -> int:
    """Places after the point once trailing zeros are dropped, as pydantic counts them
    (exactly, where ``Decimal.normalize`` would round to the context's precision)."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    if exponent >= 0:
        return 0
    zeros = len(digits) - len(bytes(digits).rstrip(b"\0"))
    return 0 if zeros == len(digits) else max(0, -(exponent + zeros))


def _default(model: type[BaseModel], name: str) -> Any:
    """The model's default for a field, given as a factory: msgspec never omits a value
    made by a factory of its own when encoding, and the canonical JSON drops only None."""
    field = model.model_fields[name]
    if field.default_factory is not None:  # e.g. dict: a new one per event
        return msgspec.field(default_factory=lambda: field.get_default(call_default_factory=True))
    value = field.default
    return msgspec.field(default_factory=lambda: value)


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 has no UTC datetime
        raise ValueError("out of range once converted to UTC") from None


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """``omit_defaults`` drops exactly the None values (every other default is a factory).
    Subclasses repeat ``frozen`` for mypy, which does not see msgspec's inheritance."""


# -- the mirrors, fields in the models' order ------------------------------------------------


class FastProducer(_Struct, frozen=True):
    service: Annotated[str, _meta(Producer, "service")]
    host: Annotated[str, _meta(Producer, "host")] | None = None
    pid: int | None = None
    library_version: str = _default(Producer, "library_version")


_COUNT = _meta(Usage, "input_uncached")
_IMAGES = _meta(ImageUsage, "count")
_AUDIO_SECONDS = _DecimalRule.of(Usage, "audio_seconds")


class FastImageUsage(_Struct, frozen=True):
    count: Annotated[int, _IMAGES]
    size: Annotated[str, _meta(ImageUsage, "size")]
    quality: Annotated[str, _meta(ImageUsage, "quality")] = _default(ImageUsage, "quality")


class FastUsage(_Struct, frozen=True):
    input_uncached: Annotated[int, _COUNT] = _default(Usage, "input_uncached")
    input_cache_read: Annotated[int, _COUNT] = _default(Usage, "input_cache_read")
    input_cache_write: Annotated[int, _COUNT] = _default(Usage, "input_cache_write")
    output_text: Annotated[int, _COUNT] = _default(Usage, "output_text")
    output_reasoning: Annotated[int, _COUNT] = _default(Usage, "output_reasoning")
    embedding_tokens: Annotated[int, _COUNT] = _default(Usage, "embedding_tokens")
    audio_seconds: WireDecimal = _default(Usage, "audio_seconds")
    images: FastImageUsage | None = None

    def __post_init__(self) -> None:
        _AUDIO_SECONDS.check(self.audio_seconds)


class FastPriceSource(_Struct, frozen=True):
    layer: Literal["override", "supplement", "genai-prices"]
    data_version: str
    effective_from: date | None = None
    rates: dict[str, WireDecimal] = _default(PriceSource, "rates")


_decode_price = msgspec.json.Decoder(FastPriceSource, dec_hook=_from_wire).decode
_PRICES: dict[bytes, FastPriceSource] = {}
_PRICES_KEPT = 1024
_PRICE_KEPT_BYTES = 4096
"""A price longer than this is decoded but not kept: the cache stays a few MB at most."""


if TYPE_CHECKING:
    RawPrice = FastPriceSource | None
else:
    RawPrice = msgspec.Raw
    """A price as its JSON, decoded by ``_price`` once the event is (msgspec takes no
    union of ``Raw``: a JSON null stays ``Raw``, and a missing price is None)."""


def _price(event: FastUsageRecorded | FastUsageRepriced) -> None:
    """Decode the event's price once for every event that carries the same bytes: a price
    repeats for every call of a model, and its six or so rates, read exactly, are the
    dearest part of an event to decode. Shared safely: a frozen struct nothing mutates."""
    raw: Any = event.price
    if raw is None:
        return
    key = bytes(raw)
    price = _PRICES.get(key)
    if price is None and key != b"null":
        price = _decode_price(key)
        if len(key) <= _PRICE_KEPT_BYTES:
            if len(_PRICES) >= _PRICES_KEPT:
                _PRICES.clear()
            _PRICES[key] = price
    msgspec.structs.force_setattr(event, "price", price)


_COST = _DecimalRule.of(UsageRecorded, "cost")  # UsageRepriced's too: both are events.usage._Cost


def _check_cost(event: FastUsageRecorded | FastUsageRepriced) -> None:
    """The rules of ``events.usage._Cost`` and of the envelope's ``occurred_at``; the
    price decoded (``_price``)."""
    _price(event)
    if event.cost is None:
        if not event.unpriced_reason:
            raise ValueError("an unpriced event must say why (unpriced_reason)")
    else:
        _COST.check(event.cost)
    msgspec.structs.force_setattr(event, "occurred_at", _to_utc(event.occurred_at))


_EventType = type[Event]
"""Spelled outside the classes, where the field ``type`` shadows the builtin."""


# kw_only (which msgspec applies per class): required fields follow defaulted ones, as in
# the models. ``type`` is a field in the models' place, not a msgspec tag (which would be
# written first): so ``document`` is byte for byte ``canonical``. The model gives it a
# default, but the contract requires it (``events.decode`` dispatches on it).
class FastUsageRecorded(_Struct, frozen=True, kw_only=True):
    MODEL: ClassVar[_EventType] = UsageRecorded

    event_id: uuid.UUID
    schema_version: Literal[2] = _default(UsageRecorded, "schema_version")
    occurred_at: WireTime
    producer: FastProducer | None = None
    cost: WireDecimal | None = None
    currency: Literal["USD"] = _default(UsageRecorded, "currency")
    price: RawPrice = None
    unpriced_reason: str | None = None
    type: Literal["UsageRecorded"]
    provider: Annotated[str, _meta(UsageRecorded, "provider")]
    model: Annotated[str, _meta(UsageRecorded, "model")]
    kind: CallKind = _default(UsageRecorded, "kind")
    usage: FastUsage
    user_id: Annotated[str, _meta(UsageRecorded, "user_id")] | None = None
    project_id: Annotated[str, _meta(UsageRecorded, "project_id")] | None = None
    tags: dict[str, str] = _default(UsageRecorded, "tags")
    reservation_id: Annotated[str, _meta(UsageRecorded, "reservation_id")] | None = None
    estimated_reason: Annotated[str, _meta(UsageRecorded, "estimated_reason")] | None = None

    def __post_init__(self) -> None:
        _check_cost(self)


class FastUsageRepriced(_Struct, frozen=True, kw_only=True):
    MODEL: ClassVar[_EventType] = UsageRepriced

    event_id: uuid.UUID
    schema_version: Literal[1] = _default(UsageRepriced, "schema_version")
    occurred_at: WireTime
    producer: FastProducer | None = None
    cost: WireDecimal | None = None
    currency: Literal["USD"] = _default(UsageRepriced, "currency")
    price: RawPrice = None
    unpriced_reason: str | None = None
    type: Literal["UsageRepriced"]
    corrects: uuid.UUID
    provider: Annotated[str, _meta(UsageRepriced, "provider")]
    model: Annotated[str, _meta(UsageRepriced, "model")]
    user_id: Annotated[str, _meta(UsageRepriced, "user_id")] | None = None
    project_id: Annotated[str, _meta(UsageRepriced, "project_id")] | None = None
    reason: Annotated[str, _meta(UsageRepriced, "reason")]

    def __post_init__(self) -> None:
        _check_cost(self)


FastEvent = FastUsageRecorded | FastUsageRepriced

# Usage first: it is most of the log, and a correction fails it early (schema_version 1).
_DECODERS: tuple[Callable[[bytes], FastEvent], ...] = (
    msgspec.json.Decoder(FastUsageRecorded, dec_hook=_from_wire).decode,
    msgspec.json.Decoder(FastUsageRepriced, dec_hook=_from_wire).decode,
)


_ENCODE: Callable[[object], bytes] = msgspec.json.Encoder().encode


def decode_fast(data: bytes) -> FastEvent | None:
    """The event, or None when it is not for the fast path (see the module's docstring)."""
    if b"\\u0000" in data:  # maybe a NUL character: ``events.decode`` judges it
        return None
    for decode in _DECODERS:
        try:
            return decode(data)
        # msgspec lets UnicodeDecodeError out for bytes that are not UTF-8 in a literal
        except (msgspec.DecodeError, UnicodeDecodeError):  # ValidationError included
            continue
    return None


def document(event: FastEvent) -> str:
    """The canonical JSON of ``event``: what ``events.canonical`` makes of its model."""
    return _ENCODE(event).decode()
