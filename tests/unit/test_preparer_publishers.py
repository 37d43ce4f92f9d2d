"""The preparer reads who published a usage event from its subject
(``<prefix>.events.usage.recorded.<publisher>``), takes the bare subject of earlier
releases with no publisher, and dead-letters an event off its type's subjects."""

from __future__ import annotations

import json
import time

import pytest

from events import PolicySet, TimeBounds, Topology, UsageRecorded, encode
from projections.engine.preparer import Preparer
from projections.engine.projection import Applied

from support import usage_event

TOPOLOGY = Topology(prefix="t")
USAGE = TOPOLOGY.event_subject(UsageRecorded.SUBJECT)
# A version 1 usage event: the fast decoder leaves it to pydantic, which upcasts it.
V1 = json.dumps(
    {
        "type": "UsageRecorded",
        "schema_version": 1,
        "event_id": "0b4a4b8e-4a0e-4c39-9a44-5a0f0b1d1e01",
        "occurred_at": usage_event().occurred_at.isoformat(),
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 10,
        "output_tokens": 1,
        "cost": 0.004,
    }
).encode()


def prepare(subject: str, data: bytes, *, defer_usage: bool = False) -> Applied | str:
    preparer = Preparer(TOPOLOGY, TimeBounds(), defer_usage=defer_usage)
    prepared = preparer(1, subject, time.time_ns(), data)
    return prepared.resolve() if isinstance(prepared, Applied) else prepared


@pytest.mark.parametrize("data", [encode(usage_event()), V1], ids=["fast", "pydantic"])
@pytest.mark.parametrize("defer_usage", [False, True])
@pytest.mark.parametrize(
    ("subject", "publisher"),
    [(f"{USAGE}.host-a", "host-a"), (f"{USAGE}.api-key-k1", "api-key-k1"), (USAGE, None)],
)
def test_a_usage_event_names_the_publisher_of_its_subject(
    subject: str, publisher: str | None, data: bytes, defer_usage: bool
) -> None:
    applied = prepare(subject, data, defer_usage=defer_usage)
    assert isinstance(applied, Applied), applied
    assert (applied.event_type, applied.publisher) == (UsageRecorded, publisher)


@pytest.mark.parametrize("defer_usage", [False, True])
def test_an_event_off_its_types_subjects_is_dead_lettered(defer_usage: bool) -> None:
    policy = TOPOLOGY.event_subject(PolicySet.SUBJECT)
    deep = f"{USAGE}.host-a.x"
    assert prepare(deep, encode(usage_event()), defer_usage=defer_usage) == (
        f"type: UsageRecorded belongs on {USAGE} or {USAGE}.<publisher>, not on {deep}"
    )
    assert prepare(policy, encode(usage_event()), defer_usage=defer_usage) == (
        f"type: UsageRecorded belongs on {USAGE} or {USAGE}.<publisher>, not on {policy}"
    )
    policy_set = PolicySet.model_validate(
        {
            "occurred_at": usage_event().occurred_at,
            "policy": {"name": "p", "scope": "global", "limit_amount": "1"},
        }
    )
    assert prepare(f"{USAGE}.host-a", encode(policy_set), defer_usage=defer_usage) == (
        f"type: PolicySet belongs on {policy}, not on {USAGE}.host-a"
    )
