"""Hypothesis strategies that mutate valid event payloads: drop, replace or insert fields
at any depth, change types, huge numbers, long strings, NaN, deep nesting, broken bytes."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from events import (
    AlertRule,
    AlertRuleSet,
    BudgetPolicy,
    ImageUsage,
    PolicySet,
    PriceSource,
    Usage,
    UsageRecorded,
    UsageRepriced,
    encode,
    utc_now,
)
from events.envelope import new_event_id

__all__ = ["mutated_payloads", "valid_payloads"]

Json = Any


def valid_payloads() -> list[dict[str, Json]]:
    """One valid payload of each shape, every optional part filled in, times of now."""
    now = utc_now()
    usage = UsageRecorded(
        occurred_at=now,
        provider="openai",
        model="gpt-4o",
        usage=Usage(
            input_uncached=300,
            input_cache_read=200,
            output_text=250,
            audio_seconds=Decimal("1.5"),
            images=ImageUsage(count=2, size="1024x1024"),
        ),
        cost=Decimal("0.00425"),
        price=PriceSource(layer="override", data_version="v1", rates={"input": Decimal("2.5")}),
        user_id="alice",
        project_id="apollo",
        tags={"team": "search"},
        reservation_id="r-1",
    )
    correction = UsageRepriced(
        occurred_at=now,
        corrects=usage.event_id,
        provider="openai",
        model="gpt-4o",
        cost=Decimal("0.005"),
        reason="price fix",
    )
    policy = PolicySet(
        occurred_at=now,
        policy=BudgetPolicy(policy_id="p", name="p", limit_amount=Decimal(10)),
    )
    rule = AlertRuleSet(
        occurred_at=now,
        rule=AlertRule(rule_id="r", name="r", threshold_percent=Decimal(50)),
    )
    return [json.loads(encode(e)) for e in (usage, correction, policy, rule)]


_KEYS = st.sampled_from(
    [
        "event_id",
        "type",
        "schema_version",
        "occurred_at",
        "cost",
        "usage",
        "tags",
        "count",
        "input_uncached",
        "audio_seconds",
        "images",
        "price",
        "rates",
        "",
        "\x00",
        "\udc00",  # an unpaired surrogate, which Python's json reads
    ]
) | st.text(max_size=12)

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "",
            "NaN",
            "-Infinity",
            "1E+999999",
            "1E-999999",
            "9" * 5000,
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59+00:00",
            "2026-01-01T00:00:00",
            "UsageRecorded",
            "UsageRepriced",
            "PolicySet",
            str(new_event_id()),
            "nul\x00char",
            "\ud800",
            "0E-20000",
            "x" * 100_000,
        ]
    )
)

json_values = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=4),
    max_leaves=12,
)


def _nested(depth: int) -> Json:
    value: Json = 1
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def _mutated(draw: st.DrawFn, payload: dict[str, Json]) -> Json:
    """``payload`` with one to three changes, each at a field anywhere below the top
    (bytes that are no JSON object at all come from ``mutated_payloads``' cuts)."""
    root: Json = json.loads(json.dumps(payload))
    for _ in range(draw(st.integers(1, 3))):
        parent, key = root, draw(st.sampled_from(list(root) or [""]))
        node = root.get(key)
        while isinstance(node, dict | list) and node and draw(st.integers(0, 2)):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, draw(st.sampled_from(keys))
            node = node[key]
        operation = draw(st.sampled_from(["drop", "replace", "insert", "retype", "nest"]))
        if operation == "drop" and key in parent:
            del parent[key]
        elif operation == "insert" and isinstance(node, dict):
            node[draw(_KEYS)] = draw(json_values)
        elif operation == "insert" and isinstance(node, list):
            node.insert(draw(st.integers(0, len(node))), draw(json_values))
        elif operation == "insert" and isinstance(parent, dict):
            parent[draw(_KEYS)] = draw(json_values)
        elif operation == "insert":
            parent.insert(key, draw(json_values))
        elif operation == "retype":
            parent[key] = _retyped(node)
        elif operation == "nest":
            parent[key] = _nested(draw(st.sampled_from([2, 50, 5000])))
        else:
            parent[key] = draw(json_values)
    return root


def _retyped(value: Json) -> Json:
    """The same content as another JSON type."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, bool | int | float):
        return str(value)
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        return list(value.values())
    return 0


def _serialised(value: Json) -> bytes:
    try:
        return json.dumps(value, allow_nan=True).encode()
    except (RecursionError, ValueError):
        return b"[" * 5000 + b"]" * 5000


@st.composite
def mutated_payloads(draw: st.DrawFn, payloads: list[dict[str, Json]]) -> bytes:
    """A mutated payload as bytes; sometimes its bytes are cut or spliced too."""
    data = _serialised(draw(_mutated(draw(st.sampled_from(payloads)))))
    match draw(st.sampled_from(["as is"] * 8 + ["cut", "splice"])):
        case "cut":
            return data[: draw(st.integers(0, len(data)))]
        case "splice":
            at = draw(st.integers(0, len(data)))
            return data[:at] + draw(st.binary(max_size=8)) + data[at:]
    return data
