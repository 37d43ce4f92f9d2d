"""Per-key limits on the HTTP API (``services.api.limits``): a greedy key is refused with
429 and ``Retry-After`` while another key is answered; a key's reads in flight are capped.

Console pages count against their key's read limits the same way, answered with an HTML page.

The stack runs with tiny limits: two checks (and two usage posts) per key at once, three
reads, two of them in flight, refilled too slowly to matter during the test."""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from events import ApiRole

from http_support import call, csrf_token, eventually, sign_in, spend_locked, waiting_on_spend
from live import LiveStack

STACK_ENV = {
    "BUDGET_CALLER_RATE": "0.001",
    "BUDGET_CALLER_BURST": "2",
    "BUDGET_CALLER_QUERY_RATE": "0.001",
    "BUDGET_CALLER_QUERY_BURST": "3",
    "BUDGET_CALLER_QUERY_IN_FLIGHT": "2",
    "BUDGET_API_FEEDS_PER_KEY": "2",
}


def _assert_refused(answer: httpx.Response, setting: str) -> None:
    assert answer.status_code == 429, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert setting in problem["detail"]
    assert problem["retry_after"] > 0
    assert int(answer.headers["retry-after"]) == math.ceil(problem["retry_after"])


def test_a_greedy_key_is_refused_while_another_keys_checks_are_answered(
    stack: LiveStack, user: str
) -> None:
    check = {"model": "gpt-4o", "estimated_tokens": 100, "user_id": user}
    with (
        stack.client(stack.new_key(ApiRole.INGEST, "greedy")) as greedy,
        stack.client(stack.new_key(ApiRole.INGEST, "polite")) as polite,
    ):
        greedy_answers = [greedy.post("/api/v1/check", json=check) for _ in range(2)]
        polite_answers = []
        for _ in range(5):  # the greedy key keeps asking, the polite one asks meanwhile
            greedy_answers.append(greedy.post("/api/v1/check", json=check))
            if len(polite_answers) < 2:
                polite_answers.append(polite.post("/api/v1/check", json=check))
        # Usage posts have a bucket of their own: a host refused checks still records.
        recorded = greedy.post("/api/v1/usage", json=call(user))

    assert [a.status_code for a in greedy_answers] == [200, 200] + [429] * 5
    assert all(a.json()["allowed"] for a in greedy_answers[:2])
    for refused in greedy_answers[2:]:
        _assert_refused(refused, "caller_rate")
    assert [a.status_code for a in polite_answers] == [200, 200]
    assert all(a.json()["allowed"] for a in polite_answers)
    assert recorded.status_code == 201, recorded.text


@pytest.fixture
def spend_lock(stack: LiveStack) -> Iterator[psycopg.Connection]:
    with spend_locked(stack) as conn:
        yield conn


def test_a_keys_reads_past_its_in_flight_cap_are_refused(
    stack: LiveStack, spend_lock: psycopg.Connection
) -> None:
    viewer_key = stack.new_key(ApiRole.VIEWER, "many tabs")

    def read_spend() -> httpx.Response:
        with stack.client(viewer_key) as viewer:
            return viewer.get("/api/v1/spend")

    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(read_spend) for _ in range(2)]
        eventually(lambda: waiting_on_spend(stack) == 2, what="two reads in flight")
        # The key has a token left (burst 3) but two requests in flight, the most allowed.
        _assert_refused(read_spend(), "caller_query_in_flight")
        with stack.client(stack.new_key(ApiRole.VIEWER, "another")) as other:
            assert other.get("/api/v1/policies").status_code == 200
        spend_lock.rollback()
        assert [f.result().status_code for f in held] == [200, 200]


def test_console_pages_share_their_keys_read_limits_and_say_so_past_them(
    stack: LiveStack,
) -> None:
    viewer_key = stack.new_key(ApiRole.VIEWER, "console reader")
    with (
        httpx.Client(base_url=stack.base_url, timeout=30) as browser,  # no key header
        stack.client(viewer_key) as api,
    ):
        sign_in(browser, viewer_key)
        pages = [browser.get(path) for path in ("/policies", "/system")]
        assert [p.status_code for p in pages] == [200, 200], pages[-1].text
        assert api.get("/api/v1/policies").status_code == 200  # the key's third read
        refused = browser.get("/policies")
        signing_out = browser.post(
            "/logout", data={"csrf_token": csrf_token(pages[0].text)}
        )  # a change: not limited
        with stack.client(stack.new_key(ApiRole.VIEWER, "another reader")) as other:
            others = other.get("/api/v1/policies")
    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("text/html")
    assert "<h1>Too many requests</h1>" in refused.text
    assert "caller_query_rate" in refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["cache-control"] == "no-store"
    assert signing_out.status_code == 303
    assert others.status_code == 200


def test_a_keys_live_feeds_are_capped_while_open_and_its_reads_go_on(stack: LiveStack) -> None:
    """Every console tab keeps a feed open (and each polls the database): two feeds
    (api_feeds_per_key here) leave no room for a third, refused before it spends a token,
    while the key's reads are answered: a feed counts against the read rate as it opens,
    not in flight. (A closed feed's slot coming back: tests/unit/test_open_streams.py.)"""
    key = stack.new_key(ApiRole.VIEWER, "tabs")
    with (
        stack.client(key, timeout=httpx.Timeout(5, read=60)) as tabs,
        stack.client(key) as api,
        tabs.stream("GET", "/api/v1/alerts/stream") as first,
        tabs.stream("GET", "/api/v1/alerts/stream") as second,
    ):
        # open: the service said so (the line iterators kept, or their end closes the feed)
        lines = [feed.iter_lines() for feed in (first, second)]
        assert [next(line) for line in lines] == [": connected"] * 2
        third = tabs.get("/api/v1/alerts/stream", timeout=10)  # a stream opened: no hang
        read = api.get("/api/v1/policies")  # the key's third token (burst 3)
    assert third.status_code == 429, third.text
    assert "(api_feeds_per_key)" in third.json()["detail"]
    assert read.status_code == 200, read.text
