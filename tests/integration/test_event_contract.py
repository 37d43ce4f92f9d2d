"""The event contract at the consumers, on real NATS and PostgreSQL: an event that breaks
it (no identity of its own, on another type's subject, out of bounds) is dead-lettered
with the reason, and no such event stops or corrupts the counting of the others."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import mutated_payloads, valid_payloads
from nats.aio.client import Client

from events import (
    DecodeError,
    ImageUsage,
    TimeBounds,
    Topology,
    Usage,
    UsageRecorded,
    canonical,
    decode,
    encode,
    utc_now,
)
from events.usage import MAX_AUDIO_SECONDS, MAX_COST, MAX_IMAGES, MAX_TOKENS
from projections.alerts import AlertsProjection
from projections.engine.deadletter import recent_dead_letters
from projections.engine.rebuild import rebuild
from projections.engine.runner import EngineConfig
from projections.history import HistoryProjection
from projections.reports import ReportsProjection
from projections.spend import SpendProjection
from projections.usage_rows import USAGE_MEASURES

from support import catch_up, publish, rows, usage_event, wait_for

GLOBAL_REQUESTS = "SELECT coalesce(sum(requests), 0) FROM spend_buckets WHERE scope = 'global'"


async def reasons(nc: Client, topology: Topology) -> dict[int, str]:
    """Dead letters by the stream sequence of the message they hold."""
    letters = await recent_dead_letters(nc.jetstream(), topology, limit=10_000)
    return {letter.original_seq or 0: letter.reason for letter in letters}


async def test_an_event_on_another_types_subject_is_dead_lettered(
    nc: Client, db: str, topology: Topology
) -> None:
    misfiled = usage_event()
    js = nc.jetstream()
    await js.publish(topology.event_subject("usage.repriced"), encode(misfiled))
    await publish(nc, topology, [usage_event()])
    await catch_up(SpendProjection(), nc, db, topology)

    assert await rows(db, GLOBAL_REQUESTS) == [(1,)]
    expected = topology.event_subject(UsageRecorded.SUBJECT)
    assert (await reasons(nc, topology))[1] == (
        f"type: UsageRecorded belongs on {expected} or {expected}.<publisher>, not on"
        f" {topology.event_subject('usage.repriced')}"
    )


async def test_a_tag_named_event_id_does_not_give_an_event_its_identity(
    nc: Client, db: str, topology: Topology
) -> None:
    """Counted, it would get a new id on every read: counted again by every rebuild."""
    payload = json.loads(encode(usage_event().model_copy(update={"tags": {"event_id": "x"}})))
    del payload["event_id"]
    js = nc.jetstream()
    await js.publish(topology.event_subject(UsageRecorded.SUBJECT), json.dumps(payload).encode())
    await publish(nc, topology, [usage_event()])
    await catch_up(SpendProjection(), nc, db, topology)

    assert await rows(db, GLOBAL_REQUESTS) == [(1,)]
    assert (await reasons(nc, topology))[1].startswith("event_id: required at the top level")


async def test_an_event_out_of_time_bounds_is_dead_lettered_saying_which_bound(
    nc: Client, db: str, topology: Topology
) -> None:
    """The default bounds: 5 minutes ahead of the time the event was stored, 730 days
    back."""
    now = utc_now()
    ahead, old = usage_event(at=now + timedelta(hours=1)), usage_event(at=now - timedelta(days=800))
    await publish(nc, topology, [ahead, old, usage_event()])
    await catch_up(SpendProjection(), nc, db, topology, config=EngineConfig())

    assert await rows(db, GLOBAL_REQUESTS) == [(1,)]
    found = await reasons(nc, topology)
    assert found[1].startswith(f"occurred_at: {ahead.occurred_at.isoformat()} is 0:5")
    assert "(max_clock_skew) is allowed" in found[1]
    assert found[2].startswith(f"occurred_at: {old.occurred_at.isoformat()} is 800 days")
    assert "(max_event_age) is allowed" in found[2]


async def test_a_rebuild_judges_an_event_by_when_it_was_stored_not_by_when_it_is_read(
    nc: Client, db: str, topology: Topology
) -> None:
    """An event inside the window when it arrived stays counted in a rebuild that runs
    after the window has passed it: replay equals live."""
    config = EngineConfig(time_bounds=TimeBounds(max_event_age=timedelta(seconds=3)))
    event = usage_event(at=utc_now() - timedelta(seconds=1))
    await publish(nc, topology, [event])
    await catch_up(SpendProjection(), nc, db, topology, config=config)
    assert await rows(db, GLOBAL_REQUESTS) == [(1,)]

    async def past_the_window() -> bool:
        """the event is older than the window"""
        return utc_now() - event.occurred_at > timedelta(seconds=4)

    await wait_for(past_the_window, within=10)

    await rebuild(SpendProjection(), nc=nc, database_url=db, topology=topology, config=config)

    assert await rows(db, GLOBAL_REQUESTS) == [(1,)]
    assert await reasons(nc, topology) == {}


def maximal_event(at: datetime) -> UsageRecorded:
    """One call with every usage class and the cost at the contract's maxima."""
    usage = Usage(
        **{name: MAX_TOKENS for name, _ in USAGE_MEASURES if name != "audio_seconds"},
        audio_seconds=Decimal(MAX_AUDIO_SECONDS),
        images=ImageUsage(count=MAX_IMAGES, size="1024x1024"),
    )
    return usage_event(at=at, cost=str(MAX_COST)).model_copy(update={"usage": usage})


USAGE_PROJECTIONS = (
    SpendProjection(),
    HistoryProjection(),
    ReportsProjection(),
    AlertsProjection(),
)


async def test_calls_at_the_maxima_fit_every_projection_and_the_next_call_still_counts(
    nc: Client, db: str, topology: Topology
) -> None:
    """Many maximal calls in one quarter hour, on top of totals holding what 9.2 million
    such calls leave (ten short of a bigint's range), then an ordinary call: every one is
    counted in every projection, none dead-lettered."""
    at = utc_now().replace(minute=7, second=0, microsecond=0) - timedelta(hours=1)
    await publish(nc, topology, [usage_event(at=at)])
    for projection in USAGE_PROJECTIONS:
        await catch_up(projection, nc, db, topology)
    history = 2**63 - 1 - 10 * MAX_TOKENS  # 9.2 million maximal calls: bigint's range, nearly
    for table in ("spend_buckets_v1", "report_quarterly_v1", "report_daily_v1"):
        await rows(
            db, f"UPDATE {table} SET input_uncached = input_uncached + {history} RETURNING 1"
        )
    maximal = [maximal_event(at) for _ in range(40)]
    ordinary = usage_event(at=at, cost="0.01")
    await publish(nc, topology, [*maximal, ordinary])
    for projection in USAGE_PROJECTIONS:
        await catch_up(projection, nc, db, topology)

    assert await reasons(nc, topology) == {}
    first = usage_event(at=at)  # the same counts and cost as the first call
    expected = (
        Decimal(40 * MAX_COST) + first.cost + ordinary.cost,  # type: ignore[operator]
        42,
        history + 40 * MAX_TOKENS + 2 * first.usage.input_uncached,
        40 * MAX_IMAGES,
    )
    totals = "sum(cost), sum(requests), sum(input_uncached), sum(images)"
    assert await rows(db, f"SELECT {totals} FROM spend_buckets WHERE scope = 'global'") == [
        expected
    ]
    # the alert evaluator keeps cost measures only
    alert_totals = "sum(cost), sum(requests) FROM alert_spend_buckets WHERE scope = 'global'"
    assert await rows(db, f"SELECT {alert_totals}") == [expected[:2]]
    for rollup in ("report_quarterly", "report_daily"):
        assert await rows(db, f"SELECT {totals} FROM {rollup} WHERE dimension = 'total'") == [
            expected
        ]
    assert await rows(db, "SELECT count(*), sum(image_count) FROM usage_history") == [
        (42, 40 * MAX_IMAGES)
    ]


async def test_a_cost_beyond_the_maximum_is_dead_lettered_and_cannot_overflow_a_bucket(
    nc: Client, db: str, topology: Topology
) -> None:
    """Unbounded, a cost of 10**131072 - 1 fit the numeric bucket, and every later call of
    its quarter hour overflowed it: dead-lettered, lost from every total."""
    at = utc_now() - timedelta(minutes=30)
    payload = json.loads(encode(usage_event(at=at)))
    payload["cost"] = "9" * 131072
    js = nc.jetstream()
    await js.publish(topology.event_subject(UsageRecorded.SUBJECT), json.dumps(payload).encode())
    await publish(nc, topology, [usage_event(at=at, cost="1")])
    await catch_up(SpendProjection(), nc, db, topology)

    assert await rows(
        db, "SELECT sum(cost), sum(requests) FROM spend_buckets WHERE scope = 'global'"
    ) == [(Decimal(1), 1)]
    assert (await reasons(nc, topology))[1] == (
        f"cost: Input should be less than or equal to {MAX_COST}"
    )


HOSTILE = [
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser goes
    json.dumps(  # an older version whose token count is Infinity once parsed
        {
            "type": "UsageRecorded",
            "schema_version": 1,
            "event_id": "01a23835-d3f1-751c-bc5d-8f896d2660eb",
            "occurred_at": "2026-03-01T10:00:00Z",
            "provider": "x",
            "model": "y",
            "input_tokens": float("inf"),
        }
    ).encode(),
    b"\xff\xfe not even text",
]


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(mutated_payloads(valid_payloads()), min_size=100, max_size=100))
async def test_a_consumer_fed_mutated_payloads_dead_letters_the_bad_and_counts_the_rest(
    nc: Client, db: str, topology: Topology, mutated: list[bytes]
) -> None:
    """Each mutated message, followed by an honest call, is counted once or dead-lettered
    with a reason; every honest call is counted. (One stream and schema for all examples:
    each looks only at its own messages.)"""
    await catch_up(SpendProjection(), nc, db, topology)  # the earlier examples' messages
    ledger = "SELECT event_id FROM spend_ledger"
    known = {event_id for (event_id,) in await rows(db, ledger)}
    js = nc.jetstream()
    subject = topology.event_subject(UsageRecorded.SUBJECT)
    sent: list[tuple[int, bytes, int]] = []
    honest = [usage_event() for _ in HOSTILE + mutated]
    for data, call in zip(HOSTILE + mutated, honest, strict=True):
        ack, honest_ack = await js.publish(subject, data), await js.publish(subject, encode(call))
        sent.append((ack.seq, data, honest_ack.seq))
    await catch_up(SpendProjection(), nc, db, topology, config=EngineConfig())

    letters = await reasons(nc, topology)
    expected: set[UUID] = {call.event_id for call in honest}
    for seq, data, honest_seq in sent:
        assert honest_seq not in letters
        try:
            event = decode(data)
        except DecodeError:
            assert letters[seq].strip()
            continue
        if seq not in letters:
            assert isinstance(event, UsageRecorded)  # any other type is on a wrong subject
            expected.add(event.event_id)
    first, last = sent[0][0], sent[-1][2]
    counted = await rows(db, f"{ledger} WHERE stream_seq BETWEEN %s AND %s", (first, last))
    assert {event_id for (event_id,) in counted} == expected - known


async def test_a_reason_quoting_the_message_stays_one_readable_line(
    nc: Client, db: str, topology: Topology
) -> None:
    """A NATS header carries the reason: what it quotes of the message (a field named in
    another script, a control character) is escaped to printable ASCII."""
    payload = json.loads(encode(usage_event()))
    payload["clé\x01"] = 1
    await nc.jetstream().publish(
        topology.event_subject(UsageRecorded.SUBJECT), json.dumps(payload).encode()
    )
    await catch_up(SpendProjection(), nc, db, topology)

    assert await reasons(nc, topology) == {1: "cl\\xe9\\x01: Extra inputs are not permitted"}


async def test_an_event_whose_producer_names_only_its_service_is_counted(
    nc: Client, db: str, topology: Topology
) -> None:
    """What the JSON Schema asks of another language's producer: the service, no host or pid."""
    payload = json.loads(encode(usage_event(cost="2")))
    payload["producer"] = {"service": "node-app"}
    await nc.jetstream().publish(
        topology.event_subject(UsageRecorded.SUBJECT), json.dumps(payload).encode()
    )
    await catch_up(SpendProjection(), nc, db, topology)

    assert await reasons(nc, topology) == {}
    assert await rows(
        db, "SELECT sum(cost), sum(requests) FROM spend_buckets WHERE scope = 'global'"
    ) == [(Decimal(2), 1)]


def _unstorable(at: datetime) -> dict[str, tuple[bytes, str]]:
    """Calls no projection can store, as a producer without the contract's checks sends
    them, with the start of the reason they are dead-lettered for."""
    nul = usage_event(at=at).model_copy(update={"tags": {"team": "a\x00b"}})
    surrogate = json.loads(encode(usage_event(at=at)))
    surrogate["tags"] = {"team\udc00": "search"}  # an unpaired surrogate: no character
    places = json.loads(encode(usage_event(at=at)))
    places["usage"]["audio_seconds"] = "0E-20000"  # PostgreSQL keeps 16,383 places
    return {
        "nul": (canonical(nul).encode(), "tags.team holds a NUL"),
        "surrogate": (
            json.dumps(surrogate).encode(),
            "tags: a name in it holds an unpaired surrogate",
        ),
        "places": (
            json.dumps(places).encode(),
            "usage.audio_seconds: Value error, at most 1000 digits after the point as written",
        ),
    }


@pytest.mark.parametrize("poison", ["nul", "surrogate", "places"])
@pytest.mark.parametrize("evaluator_first", [False, True], ids=["usage-first", "alerts-first"])
async def test_a_call_no_projection_can_store_is_dead_lettered_by_every_one_that_counts_usage(
    nc: Client, db: str, topology: Topology, evaluator_first: bool, poison: str
) -> None:
    """PostgreSQL stores no NUL, no unpaired surrogate (in a tag's name) and no more than
    16,383 decimal places: such a call (published past the producer's check) must not
    count in the projections that do not store that field (the alert evaluator's) while
    those that do refuse it, so each that decodes it dead-letters it, saying why. The
    evaluator decodes only what no other consumer has recorded in the usage ledger: after
    the usage projections, it counts what they recorded and leaves the dead letter to
    them; first, it decodes and refuses the event itself. (The contract accepted the last
    two: the evaluator counted them, the others were refused by the database.)"""
    at = utc_now() - timedelta(minutes=5)
    data, reason = _unstorable(at)[poison]
    honest = usage_event(at=at)
    js = nc.jetstream()
    subject = topology.event_subject(UsageRecorded.SUBJECT)
    await js.publish(subject, data)
    await js.publish(subject, encode(honest))
    order = [*USAGE_PROJECTIONS]
    for projection in order[-1:] + order[:-1] if evaluator_first else order:
        await catch_up(projection, nc, db, topology)

    letters = await recent_dead_letters(nc.jetstream(), topology)
    decoders = ("spend", "history", "reports", *(("alerts",) if evaluator_first else ()))
    assert sorted(letter.consumer for letter in letters) == sorted(f"{n}-v1" for n in decoders)
    assert all(letter.reason.startswith(reason) for letter in letters), letters
    requests = {
        "spend": "SELECT sum(requests) FROM spend_buckets WHERE scope = 'global'",
        "alerts": "SELECT sum(requests) FROM alert_spend_buckets WHERE scope = 'global'",
        "reports": "SELECT sum(requests) FROM report_daily WHERE dimension = 'total'",
        "history": "SELECT count(*) FROM usage_history",
    }
    assert {name: await rows(db, query) for name, query in requests.items()} == {
        name: [(1,)] for name in requests
    }
