"""Per-caller limits (a token bucket and an in-flight cap) and the round robin queue of the
enforcer's decision loop, on a clock the test moves."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest

from budget.config import Settings
from events import Topology
from events.permissions import API_USER, ENFORCER_USER
from services.fair_queue import FairQueue
from services.limits import CallerLimits, LimitedRequests, _time_left

SERVICES = frozenset({"svc"})
"""The callers the limits exempt: the services' own."""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limits(clock: Clock, *, rate: float = 10, burst: int = 3, in_flight: int = 100) -> CallerLimits:
    return CallerLimits(rate=rate, burst=burst, in_flight=in_flight, exempt=SERVICES, clock=clock)


def test_a_caller_gets_its_burst_then_a_refusal_saying_when_to_retry() -> None:
    clock = Clock()
    caller_limits = limits(clock)
    assert [caller_limits.admit("greedy") for _ in range(3)] == [None, None, None]
    refusal = caller_limits.admit("greedy")
    assert refusal is not None
    assert refusal.retry_after == pytest.approx(0.1)
    assert (
        "more than 10 requests/s (caller_rate)" in refusal.reason and "'greedy'" in refusal.reason
    )
    assert caller_limits.admit("polite") is None  # another caller has its own bucket
    clock.now += 0.05
    later = caller_limits.admit("greedy")
    assert later is not None and later.retry_after == pytest.approx(0.05)
    clock.now += 0.05
    assert caller_limits.admit("greedy") is None


def test_a_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    clock = Clock()
    caller_limits = limits(clock)
    clock.now += 3600
    admitted = 0
    while caller_limits.admit("idle") is None:
        admitted += 1
    assert admitted == 3


def test_requests_in_flight_are_capped_until_answered() -> None:
    clock = Clock()
    caller_limits = limits(clock, burst=100, in_flight=2)
    assert caller_limits.admit("host") is None
    assert caller_limits.admit("host") is None
    refusal = caller_limits.admit("host")
    assert refusal is not None and "(caller_in_flight)" in refusal.reason
    assert refusal.retry_after > 0
    caller_limits.done("host")
    assert caller_limits.admit("host") is None


def test_a_caller_that_asks_again_before_its_time_has_its_refusals_held() -> None:
    clock = Clock()
    caller_limits = limits(clock, burst=1)
    assert caller_limits.admit("host") is None
    refusal = caller_limits.admit("host")
    assert refusal is not None and refusal.retry_after == pytest.approx(0.1)
    assert caller_limits.hold_for("host", refusal) == 0  # the first is sent at once
    # asked again at once, twice: each refusal is sent after the previous one's wait
    holds = []
    for _ in range(2):
        again = caller_limits.admit("host")
        assert again is not None
        holds.append(caller_limits.hold_for("host", again))
    assert holds == [pytest.approx(0.1), pytest.approx(0.2)]
    assert caller_limits.hold_for("polite", refusal) == 0  # another caller is not held
    for _ in range(100):  # never held longer than _MAX_HOLD, however often it asks
        assert caller_limits.hold_for("host", refusal) <= 1.0
    # never past the time the asker says it waits
    assert caller_limits.hold_for("host", refusal, most=0.25) == pytest.approx(0.25)
    clock.now += 3  # a caller that waited as it was told is answered at once again
    assert caller_limits.hold_for("host", refusal) == 0


def test_the_services_own_caller_is_never_limited() -> None:
    caller_limits = limits(Clock(), burst=1, in_flight=1)
    assert all(caller_limits.admit("svc") is None for _ in range(1000))


@pytest.mark.parametrize(
    ("of", "runs_as"),
    [
        (CallerLimits.of_enforcer, "service"),
        (CallerLimits.of_enforcer, ENFORCER_USER),
        (CallerLimits.of_query_service, "service"),
    ],
)
def test_the_http_apis_caller_is_never_limited_nor_a_hosts(
    of: Callable[[Settings], CallerLimits], runs_as: str
) -> None:
    """The API asks (snapshots, probes) for every key under its own NATS user and limits
    each key itself, as the services' own caller (the admin commands' ``service``, also
    for an enforcer that runs as a user of its own); a host stays limited."""
    settings = Settings(nats_user=runs_as, caller_rate=1, caller_burst=1, caller_query_burst=1)
    caller_limits = of(settings)
    assert all(caller_limits.admit(caller) is None for caller in ("service", API_USER) * 100)
    assert caller_limits.admit("host") is None
    assert caller_limits.admit("host") is not None


def test_idle_callers_are_forgotten_when_there_are_many() -> None:
    clock = Clock()
    caller_limits = limits(clock, burst=1)
    for i in range(10_000):
        caller_limits.admit(f"host-{i}")
        caller_limits.done(f"host-{i}")
    busy = caller_limits.admit("host-0")
    assert busy is not None  # its token spent: a refusal, not a new bucket
    clock.now += 1
    assert caller_limits.admit("newcomer") is None
    assert len(caller_limits._buckets) < 10_000


async def test_the_queue_serves_callers_round_robin_across_takes() -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(5):
        queue.put("greedy", f"g{i}")
    queue.put("polite", "p0")
    queue.put("other", "o0")
    first = await queue.take(2)
    assert first == [("greedy", "g0"), ("polite", "p0")]
    queue.put("polite", "p1")
    assert await queue.take(4) == [
        ("other", "o0"),
        ("greedy", "g1"),
        ("polite", "p1"),
        ("greedy", "g2"),
    ]
    assert await queue.take(10) == [("greedy", "g3"), ("greedy", "g4")]
    assert len(queue) == 0


class FakeNats:
    def __init__(self, log: list[str]) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.sent_at: list[float] = []
        """The event loop's time of each publish."""
        self.log = log

    async def publish(self, subject: str, data: bytes) -> None:
        self.published.append((subject, data))
        self.sent_at.append(asyncio.get_running_loop().time())
        self.log.append(f"refused {subject}")


async def test_a_request_waits_behind_one_of_a_greedy_callers_not_its_backlog() -> None:
    topology = Topology(prefix="t")
    handled: list[str] = []
    log: list[str] = []
    all_handled = asyncio.Event()

    async def handle(msg: Any, caller: str) -> bool:
        handled.append(caller)
        log.append(f"handled {msg.reply}")
        if len(handled) == 6:
            all_handled.set()
        return False

    nc = FakeNats(log)
    caller_limits = CallerLimits(rate=1, burst=1, in_flight=10, exempt=SERVICES, clock=Clock())
    requests = LimitedRequests(
        cast(Any, nc), caller_limits, topology, service="svc", callback=handle
    )
    try:
        for i in range(50):  # arrive before the worker runs: a backlog
            await requests.on_message(
                cast(
                    Any,
                    SimpleNamespace(
                        headers=None, subject="t.rpc.greedy.x", reply=f"_INBOX.g{i}", data=b""
                    ),
                )
            )
        for caller in ("polite", "svc", "svc", "svc", "svc"):
            await requests.on_message(
                cast(
                    Any,
                    SimpleNamespace(
                        headers=None, subject=f"t.rpc.{caller}.x", reply="_INBOX.p", data=b""
                    ),
                )
            )
        await asyncio.wait_for(all_handled.wait(), 5)
    finally:
        await requests.close()
    # one of the backlog (admitted), then the polite one, before the rest are refused
    assert log[:2] == ["handled _INBOX.g0", "handled _INBOX.p"]
    assert handled == ["greedy", "polite", "svc", "svc", "svc", "svc"]
    refused = [json.loads(data) for reply, data in nc.published if reply.startswith("_INBOX.g")]
    assert refused and all(r["retry_after"] > 0 for r in refused)
    assert all("too many requests" in r["error"] for r in refused)


async def test_a_caller_that_never_waits_is_answered_at_its_pace_not_at_once() -> None:
    """20 requests at once against a burst of 1 at 100/s: one is handled, the 19 refusals
    go out 10 ms apart (each told to wait 10 ms), while another caller is answered at once."""
    topology = Topology(prefix="t")
    log: list[str] = []
    nc = FakeNats(log)
    polite_handled = asyncio.Event()

    async def handle(msg: Any, caller: str) -> bool:
        if caller == "polite":
            polite_handled.set()
        return False

    # the limits' clock stands still: every refusal is told exactly 10 ms
    caller_limits = CallerLimits(rate=100, burst=1, in_flight=10, exempt=SERVICES, clock=Clock())
    requests = LimitedRequests(
        cast(Any, nc), caller_limits, topology, service="svc", callback=handle
    )
    try:
        for i in range(20):
            await requests.on_message(
                cast(
                    Any,
                    SimpleNamespace(
                        headers=None, subject="t.rpc.greedy.x", reply=f"_INBOX.g{i}", data=b""
                    ),
                )
            )
        await requests.on_message(
            cast(
                Any,
                SimpleNamespace(headers=None, subject="t.rpc.polite.x", reply="_INBOX.p", data=b""),
            )
        )
        await asyncio.wait_for(polite_handled.wait(), 5)
        assert len(nc.published) < 19  # the polite request did not wait for the refusals
        for _ in range(500):  # until every refusal is out
            if len(nc.published) == 19:
                break
            await asyncio.sleep(0.01)
    finally:
        await requests.close()
    assert sorted(inbox for inbox, _ in nc.published) == sorted(
        f"_INBOX.g{i}" for i in range(1, 20)
    )
    # the k-th refusal no sooner than k waits of 10 ms after the first (sent at once);
    # 1 ms for the time between the first one's decision and its publish
    since_first = [at - nc.sent_at[0] for at in nc.sent_at]
    assert all(since >= k * 0.01 - 0.001 for k, since in enumerate(since_first))
    refusals = [json.loads(data) for _, data in nc.published]
    assert all(r["retry_after"] == pytest.approx(0.01) for r in refusals)


async def test_a_message_without_an_inbox_to_answer_spends_no_callers_limits() -> None:
    """A message that expects no answer (one reflected onto a request subject) is dropped
    before it is queued: it would take a token of the caller its subject names."""
    topology = Topology(prefix="t")
    handled: list[str] = []
    done = asyncio.Event()

    async def handle(msg: Any, caller: str) -> bool:
        handled.append(msg.reply)
        done.set()
        return False

    caller_limits = CallerLimits(rate=1, burst=1, in_flight=1, exempt=SERVICES, clock=Clock())
    requests = LimitedRequests(
        cast(Any, FakeNats([])), caller_limits, topology, service="svc", callback=handle
    )
    try:
        for reply in ("", "t.events.policy.deleted"):
            await requests.on_message(
                cast(
                    Any,
                    SimpleNamespace(headers=None, subject="t.rpc.victim.x", reply=reply, data=b""),
                )
            )
        await requests.on_message(
            cast(
                Any,
                SimpleNamespace(
                    headers=None, subject="t.rpc.victim.x", reply="_R_.abc.def", data=b""
                ),
            )
        )
        await asyncio.wait_for(done.wait(), 5)
    finally:
        await requests.close()
    assert handled == ["_R_.abc.def"]  # the victim's one token went to its own request


async def test_a_caller_that_never_waits_is_bounded_in_memory() -> None:
    """At most 1,000 of one caller's requests wait for their turn (more are refused on
    arrival) and at most 1,000 of its refusals are held (more go unanswered)."""
    topology = Topology(prefix="t")
    log: list[str] = []
    nc = FakeNats(log)
    clock = Clock()
    started = asyncio.Event()
    release = asyncio.Event()

    async def handle(msg: Any, caller: str) -> bool:
        started.set()
        await release.wait()  # the caller's first request holds the service's turn
        return False

    caller_limits = CallerLimits(rate=0.001, burst=1, in_flight=1, exempt=SERVICES, clock=clock)
    requests = LimitedRequests(
        cast(Any, nc), caller_limits, topology, service="svc", callback=handle
    )

    def request(i: int) -> Any:
        return SimpleNamespace(
            headers=None, subject="t.rpc.flood.x", reply=f"_INBOX.f{i}", data=b""
        )

    try:
        await requests.on_message(cast(Any, request(0)))
        await asyncio.wait_for(started.wait(), 5)
        for i in range(1, 1_102):  # 1,000 wait; 101 more are refused on arrival
            await requests.on_message(cast(Any, request(i)))
        assert len(requests._queue) == 1_000
        assert len(nc.published) == 1  # the first refusal at once, 100 more held
        assert requests._held_by == {"flood": 100}
        release.set()
        # the 1,000 queued are refused on their turn: 900 more held, the rest unanswered
        for _ in range(500):
            if len(requests._queue) == 0:
                break
            await asyncio.sleep(0.01)
        assert len(requests._queue) == 0
        assert requests._held_by == {"flood": 1_000}
    finally:
        await requests.close()


@pytest.mark.parametrize(
    ("told", "hold_at_most"),
    [(None, 1.0), ("2", 1.55), ("0.5", 0.35), ("0", 0.1), ("-3", 0.1), ("nan", 1.0), ("x", 1.0)],
)
def test_a_held_refusal_is_sent_before_the_asker_gives_up_but_never_at_once(
    told: str | None, hold_at_most: float
) -> None:
    """The asker says how long it waits (``Budget-Time-Left``): a fifth and 50 ms of it
    are left for the way back, and a caller cannot ask to be answered at once."""
    headers = None if told is None else {"Budget-Time-Left": told}
    assert _time_left(cast(Any, SimpleNamespace(headers=headers))) == pytest.approx(hold_at_most)
