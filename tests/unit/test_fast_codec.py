"""The fast decoder mirrors the contract's models field for field, declines (rather than
misreads) what only pydantic reads, and hands consumers the same event."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, get_args

import msgspec
import pytest
from pydantic import BaseModel

from events import (
    ImageUsage,
    PriceSource,
    Producer,
    Usage,
    UsageRecorded,
    UsageRepriced,
    canonical,
    decode,
    encode,
)
from projections.engine.fast_codec import (
    FastImageUsage,
    FastPriceSource,
    FastProducer,
    FastUsage,
    FastUsageRecorded,
    FastUsageRepriced,
    decode_fast,
)
from projections.engine.projection import Applied

MIRRORS: list[tuple[type[msgspec.Struct], type[BaseModel]]] = [
    (FastUsageRecorded, UsageRecorded),
    (FastUsageRepriced, UsageRepriced),
    (FastUsage, Usage),
    (FastImageUsage, ImageUsage),
    (FastPriceSource, PriceSource),
    (FastProducer, Producer),
]


@pytest.mark.parametrize(("struct", "model"), MIRRORS, ids=lambda t: t.__name__)
def test_each_struct_has_its_models_fields_in_its_order(
    struct: type[msgspec.Struct], model: type[BaseModel]
) -> None:
    assert struct.__struct_fields__ == tuple(model.model_fields)


@pytest.mark.parametrize(
    ("struct", "model"),
    [(FastUsageRecorded, UsageRecorded), (FastUsageRepriced, UsageRepriced)],
    ids=lambda t: t.__name__,
)
def test_each_event_struct_is_its_models_current_version(
    struct: type[FastUsageRecorded | FastUsageRepriced], model: type[UsageRecorded | UsageRepriced]
) -> None:
    assert struct.MODEL is model
    fields = {field.name: field.type for field in msgspec.structs.fields(struct)}
    assert get_args(fields["type"]) == (model.__name__,)
    assert get_args(fields["schema_version"]) == (model.SCHEMA_VERSION,)


def _payload(**changes: Any) -> dict[str, Any]:
    event = UsageRecorded(
        occurred_at=datetime(2026, 1, 1, 12, tzinfo=UTC),
        provider="openai",
        model="gpt-4o",
        usage=Usage(input_uncached=300, output_text=250),
        cost=Decimal("0.00425"),
    )
    payload: dict[str, Any] = json.loads(encode(event))
    return payload | changes


@pytest.mark.parametrize(
    "lax",
    [
        {"usage": {"input_uncached": "300"}},
        {"usage": {"input_uncached": 300.0}},
        {"usage": {"input_uncached": True}},
        {"cost": 0.00425},
        {"occurred_at": 1767268800},
        {"occurred_at": "2026-01-01 12:00:00Z"},
        {"occurred_at": "2026-01-01T12:00Z"},
        {"event_id": "{01234567-89ab-7def-8123-456789abcdef}"},
        {"schema_version": 2.0},
    ],
    ids=repr,
)
def test_a_lax_form_is_left_to_pydantic_which_reads_it(lax: dict[str, Any]) -> None:
    data = json.dumps(_payload(**lax)).encode()
    assert decode_fast(data) is None
    decode(data)


def test_an_older_version_is_left_to_pydantic_which_upcasts_it() -> None:
    v1 = {
        "type": "UsageRecorded",
        "schema_version": 1,
        "event_id": "01234567-89ab-7def-8123-456789abcdef",
        "occurred_at": "2026-01-01T12:00:00Z",
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 10,
        "cost": 0.5,
    }
    data = json.dumps(v1).encode()
    assert decode_fast(data) is None
    assert isinstance(decode(data), UsageRecorded)


def test_a_fast_applied_event_builds_its_model_only_when_asked() -> None:
    data = json.dumps(_payload(occurred_at="2026-01-01T13:00:00+01:00")).encode()
    fast = decode_fast(data)
    assert isinstance(fast, FastUsageRecorded)
    applied = Applied.of_fast(7, fast)
    assert applied.event_type is UsageRecorded
    assert applied.occurred_at == datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert applied.occurred_at.utcoffset() == timedelta(0)
    assert applied.recorded is fast
    assert applied.event_of(UsageRepriced) is None
    assert not applied._model  # nothing built yet
    assert applied.event == decode(data)
    assert applied.document == canonical(decode(data))
    assert applied.event_of(UsageRecorded) is applied.event


def test_an_applied_event_from_pydantic_reads_the_same() -> None:
    event = decode(json.dumps(_payload()).encode())
    applied = Applied.of(3, event)
    assert (applied.event_type, applied.occurred_at) == (UsageRecorded, event.occurred_at)
    assert applied.event is event
    assert applied.recorded is event
    with pytest.raises(TypeError):
        Applied.of(4, UsageRepriced.model_validate(_repriced())).recorded  # noqa: B018


def _repriced() -> dict[str, Any]:
    return {
        "occurred_at": datetime(2026, 1, 1, tzinfo=UTC),
        "corrects": "01234567-89ab-7def-8123-456789abcdef",
        "provider": "openai",
        "model": "gpt-4o",
        "cost": Decimal(1),
        "reason": "price fix",
    }
