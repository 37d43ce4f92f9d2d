"""A usage post whose events the event log took but did not confirm (its ack lost: a
timeout, a dropped connection) may have stored them: the 503 names the ids to retry
with, which the client may not know (made by the API for a post without them), and a
retry with them is answered as a duplicate, counted once. JetStream stands in here as a
fake that stores and drops re-sends as it does, and loses its first ack (a real server
cannot be made to lose one on cue)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace

import psycopg
import pytest
from nats.errors import TimeoutError as NatsTimeout

from budget.config import Settings
from budget.disabled import DisabledPublisher
from budget.pricing.registry import get_pricing_registry
from budget.tracker import UsageTracker
from events import ApiRole
from events.codec import HEADER_MSG_ID
from services.api.auth import Principal
from services.api.problems import Problem, problem_response
from services.api.routes import ingest

CALL = {"model": "gpt-4o", "provider": "openai", "input_tokens": 1000, "output_tokens": 500}
POSTER = Principal("0123456789ab", "host-app", ApiRole.INGEST, session=False)


class AckLosingJetStream:
    """Keeps each message under its message id, as JetStream does (a re-send is a
    duplicate), and loses the ack of the first publish after storing it."""

    def __init__(self) -> None:
        self.stored: dict[str, tuple[int, bytes]] = {}
        self.acks_to_lose = 1

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> object:
        msg_id = headers[HEADER_MSG_ID]
        duplicate = msg_id in self.stored
        if not duplicate:
            self.stored[msg_id] = (len(self.stored) + 1, payload)
        if self.acks_to_lose:
            self.acks_to_lose -= 1
            raise NatsTimeout
        return SimpleNamespace(stream="events", seq=self.stored[msg_id][0], duplicate=duplicate)

    async def get_msg(self, stream: str, seq: int) -> object:
        (data,) = (payload for at, payload in self.stored.values() if at == seq)
        return SimpleNamespace(data=data)


class UnprojectedDatabase:
    """The database right after the posts: no projection has recorded their events yet,
    so the usage ledger holds none of their ids (or, ``away``, it stopped answering)."""

    away = False

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[object]:
        if self.away:
            raise psycopg.OperationalError("server closed the connection unexpectedly")

        async def execute(query: str, params: object) -> object:
            async def fetchall() -> list[object]:
                return []

            return SimpleNamespace(fetchall=fetchall)

        yield SimpleNamespace(execute=execute)


@pytest.fixture
async def api() -> SimpleNamespace:
    settings = Settings()
    tracker = UsageTracker(settings, await get_pricing_registry(), DisabledPublisher())
    jetstream = AckLosingJetStream()
    nc = SimpleNamespace(is_connected=True, jetstream=lambda: jetstream)
    return SimpleNamespace(
        settings=settings,
        tracker=tracker,
        nc=nc,
        jetstream=jetstream,
        database=UnprojectedDatabase(),
    )


async def test_an_unconfirmed_post_names_its_event_id_and_a_retry_with_it_counts_once(
    api: SimpleNamespace,
) -> None:
    with pytest.raises(Problem) as unconfirmed:
        await ingest.record_call(api, POSTER, ingest.UsageIn(**CALL))  # type: ignore[arg-type]
    problem = unconfirmed.value
    assert problem.status == 503
    [event_id] = problem.event_ids or []
    assert list(api.jetstream.stored) == [event_id]  # stored, under the id the API made
    assert f"retry with event_id {event_id}" in problem.detail
    assert problem_response(problem).body.decode().count(event_id) == 2  # detail, event_ids

    status, retried = await ingest.record_call(
        api,  # type: ignore[arg-type]
        POSTER,
        ingest.UsageIn(**CALL, event_id=event_id),
    )
    assert (status, retried.duplicate, str(retried.event.event_id)) == (200, True, event_id)
    assert len(api.jetstream.stored) == 1


async def test_an_unconfirmed_batch_names_every_event_id_in_order(api: SimpleNamespace) -> None:
    users = ["u0", "u1", "u2"]
    calls = [ingest.UsageIn(**CALL, user_id=user) for user in users]
    with pytest.raises(Problem) as unconfirmed:
        await ingest.record_batch(api, POSTER, ingest.UsageBatch(events=calls))  # type: ignore[arg-type]
    ids = unconfirmed.value.event_ids or []
    assert len(ids) == 3 and set(api.jetstream.stored) <= set(ids)

    retry = [
        ingest.UsageIn(**CALL, user_id=user, event_id=event_id)
        for user, event_id in zip(users, ids, strict=True)
    ]
    answer = await ingest.record_batch(api, POSTER, ingest.UsageBatch(events=retry))  # type: ignore[arg-type]
    assert [str(r.event_id) for r in answer.results] == ids
    assert len(api.jetstream.stored) == 3


async def test_a_post_that_cannot_ask_the_ledger_stores_nothing(api: SimpleNamespace) -> None:
    """A given event_id may have been stored before JetStream's window: with the database
    gone between the key check and the ledger's answer (which a real server cannot be
    made to do on cue), the post is a 503 that stored nothing, never a guess."""
    api.database.away = True
    api.jetstream.acks_to_lose = 0
    with pytest.raises(Problem) as away:
        await ingest.record_call(
            api,  # type: ignore[arg-type]
            POSTER,
            ingest.UsageIn(**CALL, event_id="0193f0a0-0000-7000-8000-000000000001"),
        )
    assert away.value.status == 503
    assert "retry with the same event_ids" in away.value.detail
    assert api.jetstream.stored == {}
