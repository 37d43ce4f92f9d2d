"""Checks and usage over HTTP: the tracker's semantics (pricing, reservations,
settlement), and a retried usage post never counted twice."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import httpx
import psycopg
import pytest

from budget.periods import Period
from events import ApiRole, UsageRecorded, decode, encode
from events.subjects import API_KEY_CALLER
from services.ops import nats_client

from http_support import call, eventually
from live import LiveStack
from support import start_of

YESTERDAY = start_of(Period.DAILY, ago=1)
"""Midnight UTC yesterday: calls that day lie inside the contract's time bounds."""
ZULU = "%Y-%m-%dT%H:%M:%SZ"
JSON = {"Content-Type": "application/json"}


def spend_of(http: httpx.Client, user: str) -> tuple[Decimal, int]:
    rows = http.get("/api/v1/spend", params={"scope": "user", "key": user}).json()
    return (Decimal(rows[0]["cost"]), rows[0]["requests"]) if rows else (Decimal(0), 0)


def test_a_retried_post_counts_once(ingest: httpx.Client, viewer: httpx.Client, user: str) -> None:
    event_id = str(uuid.uuid4())
    first = ingest.post("/api/v1/usage", json=call(user, event_id=event_id))
    assert first.status_code == 201, first.text
    stored = first.json()
    assert stored["duplicate"] is False
    assert stored["event"]["event_id"] == event_id
    assert stored["event"]["cost"] == "0.00750000"
    again = ingest.post("/api/v1/usage", json=call(user, event_id=event_id))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["stream_seq"] == stored["stream_seq"]
    other = ingest.post("/api/v1/usage", json=call(user)).json()  # an id is made when absent
    assert uuid.UUID(other["event"]["event_id"]) != uuid.UUID(event_id)

    eventually(lambda: spend_of(viewer, user)[1] == 2, what="both events counted")
    assert spend_of(viewer, user) == (Decimal("0.015"), 2)
    history = viewer.get("/api/v1/usage", params={"user_id": user}).json()["rows"]
    assert sorted(r["event_id"] for r in history) == sorted([event_id, other["event"]["event_id"]])


def test_the_fast_path_answers_as_the_route(ingest: httpx.Client, user: str) -> None:
    """A post with a cookie goes through the app's layers, one without through
    ``services.api.usage_fast_path``: the same statuses and bytes, either way round."""
    through_app = {"Cookie": "unrelated=1"}
    for first_headers, again_headers in (({}, through_app), (through_app, {})):
        body = call(user, event_id=str(uuid.uuid4()))
        first = ingest.post("/api/v1/usage", json=body, headers=first_headers)
        again = ingest.post("/api/v1/usage", json=body, headers=again_headers)
        assert (first.status_code, again.status_code) == (201, 200), (first.text, again.text)
        assert first.headers["content-type"] == again.headers["content-type"] == "application/json"
        assert again.content == first.content.replace(b'"duplicate":false', b'"duplicate":true')
        other_call = {**body, "output_tokens": 501}
        conflicts = [
            ingest.post("/api/v1/usage", json=other_call, headers=headers)
            for headers in (first_headers, again_headers)
        ]
        assert [c.status_code for c in conflicts] == [409, 409]
        assert conflicts[0].content == conflicts[1].content
        assert conflicts[0].headers["content-type"] == "application/problem+json"


def test_usage_in_every_shape(ingest: httpx.Client, viewer: httpx.Client, user: str) -> None:
    at = YESTERDAY + timedelta(hours=11)
    noon_at_plus_one = at.astimezone(timezone(timedelta(hours=1)))
    raw = ingest.post(
        "/api/v1/usage",
        json={
            "model": "claude-sonnet-4-20250514",
            "provider": "anthropic",
            "user_id": user,
            "usage": {"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 20},
            "tags": {"feature": "summaries"},
            "occurred_at": noon_at_plus_one.isoformat(),
        },
    )
    assert raw.status_code == 201, raw.text
    event = raw.json()["event"]
    assert event["usage"]["input_uncached"] == 100 and event["usage"]["input_cache_read"] == 20
    assert event["occurred_at"] == at.strftime(ZULU)
    unpriced = ingest.post(
        "/api/v1/usage", json={"model": "no-such-model", "provider": "openai", "user_id": user}
    ).json()["event"]
    assert unpriced["cost"] is None and unpriced["unpriced_reason"]

    wrong = ingest.post("/api/v1/usage", json=call(user, input_tokens=10, cached_tokens=20))
    assert wrong.status_code == 422 and "cached_tokens" in wrong.json()["detail"]
    negative = ingest.post("/api/v1/usage", json=call(user, output_tokens=-1))
    assert negative.json()["errors"][0]["field"] == "body.output_tokens"
    naive_noon = noon_at_plus_one.replace(tzinfo=None).isoformat()  # recent, but in which zone?
    naive = ingest.post("/api/v1/usage", json=call(user, occurred_at=naive_noon))
    assert naive.json()["errors"][0]["field"] == "body.occurred_at"
    unknown = ingest.post("/api/v1/usage", json=call(user, colour="blue"))
    assert unknown.json()["errors"][0]["field"] == "body.colour"


@pytest.mark.parametrize(
    ("path", "body", "field", "given"),
    [
        ("/api/v1/usage", call("u", input_tokens=True), "body.input_tokens", "true"),
        ("/api/v1/usage", call("u", output_tokens="500"), "body.output_tokens", '"500"'),
        (
            "/api/v1/usage/batch",
            {"events": [call("u"), call("u", cached_tokens=False)]},
            "body.events.1.cached_tokens",
            "false",
        ),
        (
            "/api/v1/check",
            {"model": "gpt-4o", "estimated_tokens": True},
            "body.estimated_tokens",
            "true",
        ),
    ],
)
def test_a_count_that_is_no_number_is_refused(
    ingest: httpx.Client, path: str, body: dict[str, object], field: str, given: str
) -> None:
    """As in a raw usage object: ``true`` is no 1 token, nor ``"500"`` 500."""
    answer = ingest.post(path, json=body)
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["errors"]
    assert error == {"field": field, "message": f"must be a whole number of tokens, got {given}"}


def test_a_count_given_as_a_whole_float_is_that_count(ingest: httpx.Client, user: str) -> None:
    """``1000.0`` (a client that computes counts in floating point) is 1000, as in a raw
    usage object."""
    answer = ingest.post("/api/v1/usage", json=call(user, input_tokens=1000.0))
    assert answer.status_code == 201, answer.text
    assert answer.json()["event"]["usage"]["input_uncached"] == 1000


def test_amounts_sent_as_json_numbers_are_the_amounts_written(
    ingest: httpx.Client, user: str
) -> None:
    """JSON numbers were read as binary floats: an estimate of 0.0100000000000000001 was
    0.01, and audio of 1.00000000000000001 seconds 1.0. Through the app and through the
    fast path alike."""
    estimate = '{"model": "gpt-4o", "estimated_cost": 0.0100000000000000001, "reserve": false}'
    checked = ingest.post("/api/v1/check", content=estimate, headers=JSON)
    assert checked.status_code == 200, checked.text
    assert checked.json()["estimated_cost"] == "0.0100000000000000001"
    audio = json.dumps(call(user, model="whisper-1", audio_seconds="AUDIO")).replace(
        '"AUDIO"', "1.00000000000000001"
    )
    for headers in (JSON, {**JSON, "Cookie": "unrelated=1"}):
        posted = ingest.post("/api/v1/usage", content=audio, headers=headers)
        assert posted.status_code == 201, posted.text
        assert posted.json()["event"]["usage"]["audio_seconds"] == "1.00000000000000001"


def test_check_reserves_refuses_and_settles(
    admin: httpx.Client, ingest: httpx.Client, viewer: httpx.Client, user: str
) -> None:
    cap = {"name": "cap", "scope": "user", "scope_key": user, "limit_amount": "0.02"}
    admin.put(f"/api/v1/policies/cap-{user}", json={**cap, "action": "block"}).raise_for_status()

    allowed = ingest.post(
        "/api/v1/check", json={"model": "gpt-4o", "estimated_cost": "0.015", "user_id": user}
    ).json()
    assert allowed["allowed"] is True and allowed["enforced"] is True
    reservation = allowed["reservation_id"]
    assert reservation

    refused = ingest.post(
        "/api/v1/check", json={"model": "gpt-4o", "estimated_cost": "0.01", "user_id": user}
    ).json()
    assert refused["allowed"] is False and refused["action"] == "block"
    assert refused["decided_by"] == [f"cap-{user}"]

    # Settling with the actual cost ($0.0075) frees the rest of the hold.
    ingest.post("/api/v1/usage", json=call(user, reservation_id=reservation)).raise_for_status()
    eventually(lambda: spend_of(viewer, user)[1] == 1, what="the usage counted")

    def allowed_again() -> bool:
        answer = ingest.post(
            "/api/v1/check",
            json={"model": "gpt-4o", "estimated_cost": "0.01", "user_id": user, "reserve": False},
        )
        return bool(answer.json()["allowed"])

    eventually(allowed_again, what="the settled hold no longer counts in full")

    held = ingest.post(
        "/api/v1/check", json={"model": "gpt-4o", "estimated_cost": "0.01", "user_id": user}
    ).json()
    assert held["allowed"] is True
    release = f"/api/v1/reservations/{held['reservation_id']}/release"
    # Another key (even an admin's) cannot free a hold this key's check made.
    foreign = admin.post(release)
    assert foreign.status_code == 403, foreign.text
    assert "made by another key's check" in foreign.json()["detail"]
    # Nor settle it with a usage event naming it (which would free what it holds).
    settle = admin.post("/api/v1/usage", json=call(user, reservation_id=held["reservation_id"]))
    assert settle.status_code == 403, settle.text
    assert settle.json()["errors"] == [
        {"field": "body.reservation_id", "message": "another key's check made it"}
    ]
    batch = {"events": [call(user), call(user, reservation_id=held["reservation_id"])]}
    settle = admin.post("/api/v1/usage/batch", json=batch)
    assert settle.status_code == 403, settle.text
    assert [e["field"] for e in settle.json()["errors"]] == ["body.events.1.reservation_id"]
    assert ingest.post(release).json() == {"released": 1}  # still held: nothing settled it
    assert ingest.post(release).json() == {"released": 0}  # already given back
    # A hold that is gone is no one's: naming it settles nothing, and the call counts.
    assert (
        admin.post(
            "/api/v1/usage", json=call(user, reservation_id=held["reservation_id"])
        ).status_code
        == 201
    )

    bad = ingest.post("/api/v1/check", json={"model": "", "estimated_tokens": -5})
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} == {"body.model", "body.estimated_tokens"}


def test_a_check_without_an_estimate_is_refused_at_a_spent_limit(
    admin: httpx.Client, ingest: httpx.Client, user: str
) -> None:
    """No estimated_tokens nor estimated_cost: the check is estimated at $0, and once the
    BLOCK limit is held in full it is refused too, not admitted for costing nothing."""
    cap = {"name": "cap", "scope": "user", "scope_key": user, "limit_amount": "0.01"}
    admin.put(f"/api/v1/policies/spent-{user}", json={**cap, "action": "block"}).raise_for_status()
    ask = {"model": "gpt-4o", "user_id": user}
    assert ingest.post("/api/v1/check", json={**ask, "estimated_cost": "0.01"}).json()["allowed"]
    refused = ingest.post("/api/v1/check", json=ask).json()
    assert refused["allowed"] is False and refused["action"] == "block", refused
    assert "its limit 0.01 is reached" in refused["reason"]


def test_a_check_names_how_long_its_hold_lives(
    stack: LiveStack, admin: httpx.Client, ingest: httpx.Client, user: str
) -> None:
    cap = {"name": "cap", "scope": "user", "scope_key": user, "limit_amount": "1"}
    admin.put(f"/api/v1/policies/ttl-{user}", json={**cap, "action": "block"}).raise_for_status()
    ask = {"model": "gpt-4o", "estimated_cost": "0.01", "user_id": user, "ttl_seconds": 7}
    held = ingest.post("/api/v1/check", json=ask).json()
    assert held["allowed"] and held["reservation_id"]
    with psycopg.connect(stack.settings.database_url) as conn:
        [(left,)] = conn.execute(
            "SELECT extract(epoch FROM max(expires_at) - now()) FROM reservation_holds"
            " WHERE reservation_id = %s",
            (held["reservation_id"],),
        ).fetchall()
    assert 0 < left <= 7  # not the enforcer's default of 300
    bad = ingest.post("/api/v1/check", json={**ask, "ttl_seconds": 0})
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["errors"]] == ["body.ttl_seconds"]


def test_an_event_id_is_one_call(ingest: httpx.Client, user: str) -> None:
    """A retry gets the stored event back; the same id for another call is refused."""
    event_id = str(uuid.uuid4())
    at = (YESTERDAY + timedelta(hours=10)).strftime(ZULU)
    stored = ingest.post("/api/v1/usage", json=call(user, event_id=event_id, occurred_at=at))
    assert stored.status_code == 201
    retry = ingest.post("/api/v1/usage", json=call(user, event_id=event_id))  # time left out
    assert retry.status_code == 200 and retry.json()["event"] == stored.json()["event"]
    other = ingest.post("/api/v1/usage", json=call(user, event_id=event_id, model="gpt-4o-mini"))
    assert other.status_code == 409 and event_id in other.json()["detail"]


def stored_without_message_id(stack: LiveStack, event: UsageRecorded) -> int:
    """``event`` on the log as JetStream holds one stored before its duplicate window (2
    minutes): under no message id it remembers. Its stream sequence."""

    async def publish() -> int:
        async with nats_client(stack.settings.nats_url) as nc:
            subject = stack.settings.topology.event_subject(UsageRecorded.SUBJECT)
            return (await nc.jetstream().publish(subject, encode(event))).seq

    return asyncio.run(publish())


def test_an_event_id_stored_before_the_duplicate_window_is_still_one_call(
    stack: LiveStack, ingest: httpx.Client, viewer: httpx.Client, user: str
) -> None:
    """Beyond JetStream's window the ledger still knows the event: a retry is answered as
    one (200, the stored event) and another call under its id is a 409, in a batch too,
    never a 201 for an event that counts nowhere."""
    first = ingest.post("/api/v1/usage", json=call(user)).json()["event"]
    old_id = str(uuid.uuid4())
    old = UsageRecorded.model_validate({**first, "event_id": old_id})
    seq = stored_without_message_id(stack, old)
    eventually(lambda: spend_of(viewer, user)[1] == 2, what="the old event counted")

    retry = ingest.post("/api/v1/usage", json=call(user, event_id=old_id))
    assert retry.status_code == 200, retry.text
    assert retry.json() == {
        "event": old.model_dump(mode="json"),
        "stream_seq": seq,
        "duplicate": True,
    }
    other = ingest.post("/api/v1/usage", json=call(user, event_id=old_id, model="gpt-4o-mini"))
    assert other.status_code == 409 and old_id in other.json()["detail"], other.text
    batch = [call(user, event_id=old_id), call("someone-else", event_id=old_id)]
    results = ingest.post("/api/v1/usage/batch", json={"events": batch}).json()["results"]
    assert [(r["status"], r["stream_seq"]) for r in results] == [
        ("duplicate", seq),
        ("conflict", seq),
    ]
    fresh = ingest.post("/api/v1/usage", json=call(user, event_id=str(uuid.uuid4())))
    assert fresh.status_code == 201, fresh.text
    eventually(lambda: spend_of(viewer, user)[1] == 3, what="the fresh call counted")
    assert spend_of(viewer, user) == (Decimal("0.0225"), 3)


@pytest.mark.parametrize(
    ("usage", "field", "message"),
    [
        ({"prompt_tokens": 10**30}, "body.usage.prompt_tokens", "must be at most 1000000000000"),
        ({"prompt_tokens": 1e30}, "body.usage.prompt_tokens", "must be at most 1000000000000"),
        ({"prompt_tokens": -5}, "body.usage.prompt_tokens", "must not be negative"),
        (
            {"usage": {"prompt_tokens": 1, "completion_tokens": 0.5}},  # a whole response
            "body.usage.usage.completion_tokens",
            "must be a whole number",
        ),
        (  # each count within its bound, their sum (the input) not: the object as a whole
            {
                "prompt_token_count": 10**12,
                "tool_use_prompt_token_count": 10**12,
                "candidates_token_count": 1,
            },
            "body.usage",
            "less than or equal to 1000000000000",
        ),
        (  # cached tokens are part of the prompt's
            {
                "prompt_tokens": 1,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": 5},
            },
            "body.usage",
            "must not exceed input_tokens",
        ),
    ],
)
def test_a_raw_usage_object_is_held_to_the_contracts_bounds(
    ingest: httpx.Client, usage: dict[str, object], field: str, message: str
) -> None:
    """Never a 201 for an event the projections could not count; the error is located on
    the count the client sent, never on a class it was normalised to."""
    answer = ingest.post(
        "/api/v1/usage", json={"model": "gpt-4o", "provider": "openai", "usage": usage}
    )
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["errors"]
    assert error["field"] == field and message in error["message"], error


def test_counts_beside_a_raw_usage_object_are_refused(ingest: httpx.Client, user: str) -> None:
    """Recording one and dropping the other would count a call the client did not post."""
    both = call(user, usage={"prompt_tokens": 3, "completion_tokens": 1})
    answer = ingest.post("/api/v1/usage", json=both)
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["errors"]
    assert error["field"] == "body.usage", error
    assert "not both: input_tokens, output_tokens given with usage=" in error["message"]


def test_a_batch_is_each_of_its_calls(
    ingest: httpx.Client, viewer: httpx.Client, user: str
) -> None:
    known = str(uuid.uuid4())
    ingest.post("/api/v1/usage", json=call(user, event_id=known)).raise_for_status()
    taken = str(uuid.uuid4())
    ingest.post("/api/v1/usage", json=call(user, event_id=taken)).raise_for_status()
    events = [
        call(user),
        call(user, event_id=known),  # a retry: counted once
        call(user, event_id=taken, model="gpt-4o-mini"),  # another call under a used id
        call(user, model="no-such-model"),
    ]
    answer = ingest.post("/api/v1/usage/batch", json={"events": events})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["stored", "duplicate", "conflict", "stored"]
    assert results[1]["event_id"] == known and results[2]["event_id"] == taken
    assert [results[i]["cost"] for i in (0, 1, 3)] == ["0.00750000", "0.00750000", None]
    eventually(lambda: spend_of(viewer, user)[1] == 4, what="four calls counted")
    assert spend_of(viewer, user) == (Decimal("0.0225"), 4)  # the unpriced one at no cost

    wrong = ingest.post(
        "/api/v1/usage/batch", json={"events": [call(user), call(user, output_tokens=-1)]}
    )
    assert wrong.status_code == 422
    assert wrong.json()["errors"][0]["field"] == "body.events.1.output_tokens"
    assert ingest.post("/api/v1/usage/batch", json={"events": []}).status_code == 422


def test_a_time_out_of_bounds_is_refused_saying_which_bound(ingest: httpx.Client) -> None:
    """Default bounds: 5 minutes ahead of now (max_clock_skew), 730 days back
    (max_event_age)."""
    now = datetime.now(UTC)
    for at, bound in (
        (now + timedelta(hours=1), "max_clock_skew"),
        (now - timedelta(days=800), "max_event_age"),
    ):
        answer = ingest.post("/api/v1/usage", json=call("bounds", occurred_at=at.isoformat()))
        assert answer.status_code == 422, answer.text
        [error] = answer.json()["errors"]
        assert error["field"] == "body.occurred_at"
        assert error["message"].startswith(f"occurred_at: {at.isoformat()} is ")
        assert f"({bound}) is allowed" in answer.json()["detail"]


def test_the_history_names_the_key_that_posted_usage(
    stack: LiveStack, viewer: httpx.Client, user: str
) -> None:
    """The API publishes a key's usage on ``<prefix>.events.usage.recorded.api-key-<id>``:
    the history's pages and exports name that key as each event's publisher, whichever
    route (the fast path, the app's layers, a batch) took it."""
    key = stack.new_key(ApiRole.INGEST)
    publisher = f"{API_KEY_CALLER}{key.split('_')[1]}"
    with stack.client(key) as poster:
        poster.post("/api/v1/usage", json=call(user)).raise_for_status()
        through_app = {"Cookie": "unrelated=1"}
        poster.post("/api/v1/usage", json=call(user), headers=through_app).raise_for_status()
        poster.post("/api/v1/usage/batch", json={"events": [call(user)]}).raise_for_status()
    eventually(lambda: spend_of(viewer, user)[1] == 3, what="the three calls counted")
    rows = viewer.get("/api/v1/usage", params={"user_id": user}).json()["rows"]
    assert [r["publisher"] for r in rows] == [publisher] * 3
    for format in ("csv", "json"):
        exported = viewer.get("/api/v1/usage/export", params={"user_id": user, "format": format})
        assert exported.text.count(publisher) == 3, exported.text


def test_a_batch_answers_a_duplicate_with_the_cost_it_was_stored_at(
    stack: LiveStack, ingest: httpx.Client, viewer: httpx.Client, user: str
) -> None:
    """A retry is answered with what was counted, as a single post's is (its event), not
    with the price the call would have now (a price changed since, say)."""
    first = ingest.post("/api/v1/usage", json=call(user)).json()["event"]
    stored_id = str(uuid.uuid4())
    stored = UsageRecorded.model_validate({**first, "event_id": stored_id, "cost": "0.00500000"})
    seq = stored_without_message_id(stack, stored)
    eventually(lambda: spend_of(viewer, user)[1] == 2, what="the stored event counted")

    single = ingest.post("/api/v1/usage", json=call(user, event_id=stored_id)).json()
    [batched] = ingest.post(
        "/api/v1/usage/batch", json={"events": [call(user, event_id=stored_id)]}
    ).json()["results"]
    assert single["event"]["cost"] == "0.00500000"
    assert batched == {
        "event_id": stored_id,
        "status": "duplicate",
        "stream_seq": seq,
        "cost": "0.00500000",
    }


def test_usage_a_key_posts_names_that_key_as_its_producer(stack: LiveStack, user: str) -> None:
    """An event's producer is whom a bad one is traced back to: the key that posted it
    (as its publisher), not the API process that relayed it under a name of its own; a
    post cannot name a producer of its choosing."""
    key = stack.new_key(ApiRole.INGEST)
    producer = {"service": f"{API_KEY_CALLER}{key.split('_')[1]}", "host": None, "pid": None}
    with stack.client(key) as poster:
        fast = poster.post("/api/v1/usage", json=call(user)).json()
        through_app = {"Cookie": "unrelated=1"}
        slow = poster.post("/api/v1/usage", json=call(user), headers=through_app).json()
        [batched] = poster.post("/api/v1/usage/batch", json={"events": [call(user)]}).json()[
            "results"
        ]
        claimed = poster.post("/api/v1/usage", json=call(user, producer={"service": "billing"}))
    assert claimed.status_code == 422, claimed.text
    assert claimed.json()["errors"][0]["field"] == "body.producer"

    async def stored(seq: int) -> UsageRecorded:
        async with nats_client(stack.settings.nats_url) as nc:
            message = await nc.jetstream().get_msg(stack.settings.topology.event_stream.name, seq)
        event = decode(message.data or b"")
        assert isinstance(event, UsageRecorded)
        return event

    for seq in (fast["stream_seq"], slow["stream_seq"], batched["stream_seq"]):
        event = asyncio.run(stored(seq))
        assert event.producer is not None
        assert event.producer.model_dump(exclude={"library_version"}) == producer
    assert fast["event"]["producer"] == {**producer, "library_version": "0.1.0"}


def test_an_estimate_beyond_the_contract_is_refused_naming_it(
    admin: httpx.Client, ingest: httpx.Client, user: str
) -> None:
    """An estimate with more places than a cost may have passed the route and failed the
    enforcer's request model: a 500 for a BLOCK-limited call (and, with no BLOCK policy,
    allowed: the call's estimated usage could then not be recorded)."""
    cap = {"name": "cap", "scope": "user", "scope_key": user, "limit_amount": "1"}
    admin.put(f"/api/v1/policies/fine-{user}", json={**cap, "action": "block"}).raise_for_status()
    finer = ingest.post(
        "/api/v1/check", json={"model": "gpt-4o", "estimated_cost": "1E-41", "user_id": user}
    )
    assert finer.status_code == 422, finer.text
    [error] = finer.json()["errors"]
    assert error["field"] == "body.estimated_cost" and "40 decimal places" in error["message"]
