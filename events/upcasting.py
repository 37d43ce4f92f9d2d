"""Upcasters: turn an older schema version of an event into the current one on read.

The stream is never rewritten; every reader upcasts. An upcaster takes the JSON object of
version ``n`` and returns the object of version ``n + 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from pydantic import TypeAdapter, ValidationError

__all__ = ["UPCASTERS", "upcast"]

JsonObject = dict[str, Any]
Upcaster = Callable[[JsonObject], JsonObject]


def _usage_recorded_v1_to_v2(old: JsonObject) -> JsonObject:
    """v1 followed the seed: ``input_tokens`` included ``cached_tokens``; cost was one number."""
    if "usage" in old:  # a v2 body: made into v1's, its counts would all read 0
        raise ValueError("a v1 event has no usage object; a v2 one says schema_version 2")
    new = {k: v for k, v in old.items() if k not in _V1_ONLY_FIELDS}
    input_tokens = _count(old, "input_tokens")
    cached = _count(old, "cached_tokens")
    new["usage"] = {
        "input_uncached": input_tokens - cached,
        "input_cache_read": cached,
        "output_text": _count(old, "output_tokens"),
    }
    cost = old.get("cost")
    new["cost"] = None if cost is None else str(Decimal(str(cost)))
    if cost is None:
        new["unpriced_reason"] = "recorded unpriced by a v1 producer"
    new["schema_version"] = 2
    return new


_INTEGER: TypeAdapter[int] = TypeAdapter(int)


def _count(old: JsonObject, name: str) -> int:
    """A v1 count read as the current models read one (``"5"`` and ``5.0`` are 5), never
    cut short: ``int()`` made 1.7 tokens 1."""
    try:
        return _INTEGER.validate_python(old.get(name, 0))
    except ValidationError as exc:
        raise ValueError(f"{name}: {exc.errors()[0]['msg']}") from None


_V1_ONLY_FIELDS = frozenset({"input_tokens", "output_tokens", "cached_tokens", "cost"})

UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("UsageRecorded", 1): _usage_recorded_v1_to_v2,
}


def upcast(obj: JsonObject, current_version: int) -> JsonObject:
    """``obj`` at ``current_version``. Without a ``schema_version``, a usage event with a
    ``usage`` object is read as v2, as the consumers' fast path reads it (so an invalid one
    is refused for what is wrong with it), any other as v1."""
    default = current_version if obj.get("type") == "UsageRecorded" and "usage" in obj else 1
    version = int(obj.get("schema_version", default))
    event_type = str(obj.get("type"))
    while version < current_version:
        step = UPCASTERS.get((event_type, version))
        if step is None:
            raise ValueError(f"no upcaster for {event_type} v{version}")
        obj = step(obj)
        version = int(obj["schema_version"])
    return obj
