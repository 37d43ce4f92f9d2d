"""Metric labels stay few: a dead letter's free-text reason becomes one of a handful of
kinds, judged on reasons the engine really writes."""

from __future__ import annotations

import time
from datetime import timedelta

import psycopg
import pytest

from events import PolicySet, TimeBounds, Topology, encode, utc_now
from projections.engine.isolation import _rejection
from projections.engine.metrics import REASON_KINDS, reason_kind
from projections.engine.preparer import Preparer
from projections.engine.projection import Rejected

from support import usage_event

TOPOLOGY = Topology(prefix="t")
USAGE_SUBJECT = TOPOLOGY.event_subject(usage_event().SUBJECT)
POLICY_SUBJECT = TOPOLOGY.event_subject(PolicySet.SUBJECT)
DAY = timedelta(days=1)


def usage_at(offset: timedelta) -> bytes:
    return encode(usage_event(at=utc_now() + offset))


def prepared(subject: str, data: bytes) -> str:
    reason = Preparer(TOPOLOGY, TimeBounds())(1, subject, time.time_ns(), data)
    assert isinstance(reason, str), "expected a dead letter"
    return reason


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        (prepared(USAGE_SUBJECT, b"not JSON"), "invalid"),
        (prepared(USAGE_SUBJECT, b'{"type": "NoSuchEvent"}'), "invalid"),
        (prepared(POLICY_SUBJECT, encode(usage_event())), "wrong_subject"),
        (prepared(USAGE_SUBJECT, usage_at(DAY)), "time_bounds"),
        (prepared(USAGE_SUBJECT, usage_at(-3650 * DAY)), "time_bounds"),
        (_rejection(psycopg.DataError("invalid byte sequence")), "database_refused"),
        (_rejection(psycopg.IntegrityError("duplicate key")), "database_refused"),
        (_rejection(Rejected("a correction of an event it never recorded")), "invalid"),
        (_rejection(ZeroDivisionError("division by zero")), "projection_failed"),
    ],
)  # fmt: skip
def test_each_reason_has_its_kind(reason: str, kind: str) -> None:
    assert reason_kind(reason) == kind
    assert kind in REASON_KINDS
