"""Usage history over HTTP: filters, keyset pages that stay put while events arrive, and
exports equal to the pages."""

from __future__ import annotations

import contextlib
import csv
import html
import io
import json
import re
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import psycopg

from budget.periods import Period
from events import ApiRole
from services.api.routes.history import MAX_EXPORTS, MAX_EXPORTS_PER_KEY

from http_support import call, eventually
from live import LiveStack
from support import start_of

BASE = start_of(Period.DAILY, ago=1)  # yesterday: the calls, 5 hours from it, are past


def post_calls(http: httpx.Client, user: str, count: int, **fields: Any) -> None:
    for i in range(count):
        at = (BASE + timedelta(minutes=7 * i)).isoformat()
        answer = http.post("/api/v1/usage", json=call(user, occurred_at=at, **fields))
        assert answer.status_code == 201, answer.text


def all_pages(http: httpx.Client, params: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = http.get(
            "/api/v1/usage", params={**params, **({"cursor": cursor} if cursor else {})}
        )
        assert page.status_code == 200, page.text
        body = page.json()
        rows += body["rows"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows


def history_count(http: httpx.Client, user: str, expected: int) -> bool:
    rows = http.get("/api/v1/usage", params={"user_id": user, "limit": 1000}).json()["rows"]
    return len(rows) >= expected


def test_pages_stay_put_while_events_arrive(
    ingest: httpx.Client, viewer: httpx.Client, user: str
) -> None:
    post_calls(ingest, user, 45)
    eventually(lambda: history_count(viewer, user, 45), what="45 rows in history")
    params = {"user_id": user, "limit": 10}
    first = viewer.get("/api/v1/usage", params=params).json()

    # 30 new events at the same times as the 45 (ties included), applied mid-browse.
    post_calls(ingest, user, 30)
    eventually(lambda: history_count(viewer, user, 75), what="the new rows applied")
    rows = first["rows"]
    cursor = first["next_cursor"]
    while cursor:
        page = viewer.get("/api/v1/usage", params={**params, "cursor": cursor}).json()
        rows += page["rows"]
        cursor = page["next_cursor"]

    ids = [r["event_id"] for r in rows]
    assert len(ids) == 45 == len(set(ids))  # every row of the browse once, none of the new
    keys = [(r["occurred_at"], r["event_id"]) for r in rows]
    assert keys == sorted(keys, reverse=True)
    assert len(all_pages(viewer, params)) == 75  # a new browse sees them


def test_filters_and_exports(ingest: httpx.Client, viewer: httpx.Client, user: str) -> None:
    post_calls(ingest, user, 6, tags={"feature": "search"})
    post_calls(ingest, user, 4, model="gpt-4o-mini", tags={"feature": "chat"})
    eventually(lambda: history_count(viewer, user, 10), what="10 rows in history")

    def rows(**params: Any) -> list[dict[str, Any]]:
        return all_pages(viewer, {"user_id": user, "limit": 3, **params})

    assert len(rows(model="gpt-4o-mini")) == 4
    assert len(rows(tag="feature=search")) == 6
    assert len(rows(provider="anthropic")) == 0
    window = rows(since=BASE.isoformat(), until=(BASE + timedelta(minutes=14)).isoformat())
    assert len(window) == 4  # two of each batch fall in the first 14 minutes

    listed = rows()
    exported = viewer.get("/api/v1/usage/export", params={"user_id": user, "format": "csv"})
    assert exported.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["event_id"] for r in table] == [r["event_id"] for r in listed]
    for cells, row in zip(table, listed, strict=True):
        expected = {
            k: "" if v is None else json.dumps(v) if k == "tags" else str(v) for k, v in row.items()
        }
        assert cells == expected

    lines = viewer.get("/api/v1/usage/export", params={"user_id": user, "format": "json"})
    assert [json.loads(line) for line in lines.text.splitlines()] == listed


def test_an_export_of_a_browse_holds_its_rows_not_those_that_arrived_since(
    ingest: httpx.Client, viewer: httpx.Client, user: str
) -> None:
    post_calls(ingest, user, 5)
    eventually(lambda: history_count(viewer, user, 5), what="5 rows in history")
    page = viewer.get("/api/v1/usage", params={"user_id": user}).json()
    listed = [r["event_id"] for r in page["rows"]]
    post_calls(ingest, user, 3)  # while the reader looks at the page
    eventually(lambda: history_count(viewer, user, 8), what="the new rows applied")

    pinned = {"user_id": user, "as_of": page["as_of"]}
    table = viewer.get("/api/v1/usage/export", params=pinned).text
    assert [r["event_id"] for r in csv.DictReader(io.StringIO(table))] == listed
    lines = viewer.get("/api/v1/usage/export", params={**pinned, "format": "json"}).text
    assert [json.loads(line)["event_id"] for line in lines.splitlines()] == listed
    now = viewer.get("/api/v1/usage/export", params={"user_id": user, "format": "json"})
    assert len(now.text.splitlines()) == 8  # unpinned: as the export starts


def test_the_consoles_export_links_hold_the_rows_its_page_shows(
    ingest: httpx.Client, viewer: httpx.Client, browser: httpx.Client, user: str
) -> None:
    post_calls(ingest, user, 4)
    eventually(lambda: history_count(viewer, user, 4), what="4 rows in history")
    page = browser.get("/history", params={"user_id": user}).text
    shown = re.findall(r'<tr data-event-id="([^"]+)"', page)
    post_calls(ingest, user, 2)
    eventually(lambda: history_count(viewer, user, 6), what="the new rows applied")

    links = re.findall(r'href="(/api/v1/usage/export\?[^"]+)"', page)
    assert len(shown) == 4 and len(links) == 2
    for link in links:
        exported = browser.get(html.unescape(link))
        assert exported.status_code == 200, exported.text
        if "format=json" in link:
            ids = [json.loads(line)["event_id"] for line in exported.text.splitlines()]
        else:
            ids = [r["event_id"] for r in csv.DictReader(io.StringIO(exported.text))]
        assert ids == shown, link


def test_a_provider_filter_matches_however_the_provider_is_spelt(
    ingest: httpx.Client, viewer: httpx.Client, browser: httpx.Client, user: str
) -> None:
    """Usage posted as "OpenAI" is recorded as "openai"; filtering by either finds it."""
    post_calls(ingest, user, 1, provider="OpenAI")
    eventually(lambda: history_count(viewer, user, 1), what="the call in history")
    for spelt in ("OpenAI", " openai"):
        params = {"user_id": user, "provider": spelt}
        assert [r["provider"] for r in all_pages(viewer, params)] == ["openai"], spelt
        export = viewer.get("/api/v1/usage/export", params={**params, "format": "json"})
        assert len(export.text.splitlines()) == 1, spelt
        page = browser.get("/history", params=params)
        assert page.status_code == 200 and page.text.count("<tr data-event-id=") == 1, spelt
    at = BASE.isoformat()
    spend = {"period": "daily", "scope": "provider", "key": "OpenAI", "at": at}
    rows = eventually(lambda: viewer.get("/api/v1/spend", params=spend).json(), what="spend")
    assert [r["scope_key"] for r in rows] == ["openai"]


def test_a_model_filter_matches_however_the_model_is_cased(
    ingest: httpx.Client, viewer: httpx.Client, browser: httpx.Client, user: str
) -> None:
    """Usage posted as "GPT-4o" and "gpt-4O" keeps its spelling in history; filtering by
    either (pages, exports, the console) finds both, and spend counts them as "gpt-4o"."""
    post_calls(ingest, user, 1, model="GPT-4o")
    post_calls(ingest, user, 1, model="gpt-4O")
    eventually(lambda: history_count(viewer, user, 2), what="the calls in history")
    for spelt in ("GPT-4o", " Gpt-4o "):
        params = {"user_id": user, "model": spelt}
        assert sorted(r["model"] for r in all_pages(viewer, params)) == ["GPT-4o", "gpt-4O"]
        export = viewer.get("/api/v1/usage/export", params={**params, "format": "json"})
        assert len(export.text.splitlines()) == 2, spelt
        page = browser.get("/history", params=params)
        assert page.status_code == 200 and page.text.count("<tr data-event-id=") == 2, spelt
    spend = {"period": "daily", "scope": "model", "key": "GPT-4O", "at": BASE.isoformat()}
    rows = eventually(lambda: viewer.get("/api/v1/spend", params=spend).json(), what="spend")
    assert [r["scope_key"] for r in rows] == ["gpt-4o"]


def test_a_spend_key_without_a_scope_is_matched_as_each_scope_counts_it(
    ingest: httpx.Client, viewer: httpx.Client
) -> None:
    """GET /spend?key= without a scope: a provider and a model however they are spelt, a
    user as given (its lower-case namesake is another user)."""
    name = f"Acme-{uuid.uuid4().hex[:8]}"
    post_calls(ingest, name, 1, provider=name, model=name)
    post_calls(ingest, name.lower(), 1, provider="openai")
    spend = {"period": "daily", "at": BASE.isoformat()}
    later = {**spend, "scope": "user", "key": name.lower()}  # applied after the first call
    eventually(lambda: viewer.get("/api/v1/spend", params=later).json(), what="both calls")
    rows = viewer.get("/api/v1/spend", params={**spend, "key": name}).json()
    found = sorted((r["scope"], r["scope_key"]) for r in rows)
    assert found == [("model", name.lower()), ("provider", name.lower()), ("user", name)]


def test_csv_exports_defuse_spreadsheet_formulas(
    ingest: httpx.Client, viewer: httpx.Client, user: str
) -> None:
    """Free text from a host app (a project id; an image's size and quality, recorded
    unpriced when no price knows them) that a spreadsheet would run as a formula is
    exported with a leading ' in CSV; JSON keeps it as recorded."""
    hostile = '=HYPERLINK("http://evil.example","x")'
    post_calls(ingest, user, 1, project_id=hostile)
    image = {"count": 1, "size": "+1024x1024", "quality": "@SUM(1+1)"}
    at = (BASE + timedelta(hours=1)).isoformat()
    drawn = ingest.post(
        "/api/v1/usage",
        json={
            "model": "dall-e-3",
            "provider": "openai",
            "user_id": user,
            "images": image,
            "occurred_at": at,
        },
    )
    assert drawn.status_code == 201, drawn.text
    eventually(lambda: history_count(viewer, user, 2), what="the rows in history")
    exported = viewer.get("/api/v1/usage/export", params={"user_id": user, "format": "csv"})
    drawing, chat = list(csv.DictReader(io.StringIO(exported.text)))  # newest first
    assert chat["project_id"] == "'" + hostile
    assert Decimal(chat["cost"]) == Decimal("0.0075")  # numbers are not touched
    assert (drawing["image_size"], drawing["image_quality"]) == ("'+1024x1024", "'@SUM(1+1)")
    lines = viewer.get("/api/v1/usage/export", params={"user_id": user, "format": "json"})
    drawn_row, chat_row = (json.loads(line) for line in lines.text.splitlines())
    assert chat_row["project_id"] == hostile
    assert (drawn_row["image_size"], drawn_row["image_quality"]) == ("+1024x1024", "@SUM(1+1)")


def test_bad_filters_are_named(stack: LiveStack) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("cursor", {"cursor": "not-a-cursor"}),
        ("tag", {"tag": "no-equals-sign"}),
        ("tag", {"tag": ["feature=search", "feature=chat"]}),  # one would be dropped
        ("until", {"since": "2026-10-02T00:00:00Z", "until": "2026-10-01T00:00:00Z"}),
        ("limit", {"limit": 0}),
        ("since", {"since": "yesterday"}),
        ("since", {"since": "2026-10-01"}),  # without an offset: says how to give one
        ("user_id", {"user_id": ""}),  # matches no call: not an empty answer
    ]
    # A key of its own: the module's other tests may have spent the shared viewer key's
    # burst of requests, and a 429 would hide the answers asserted here.
    with stack.client(stack.new_key(ApiRole.VIEWER, "bad filters")) as viewer:
        for field, params in cases:
            answer = viewer.get("/api/v1/usage", params=params)
            assert answer.status_code == 422, (field, answer.text)
            assert answer.json()["errors"][0]["field"] == f"query.{field}"
        local = viewer.get("/api/v1/usage", params={"until": "2026-10-01T09:00"})
        empty_key = viewer.get("/api/v1/spend", params={"key": ""})
        # A misspelt filter was ignored: every row came back as if filtered.
        misspelt = [
            viewer.get(path, params=params)
            for path, params in (
                ("/api/v1/usage", {"user": "nobody"}),
                ("/api/v1/usage/export", {"user": "nobody"}),
                ("/api/v1/spend", {"user_id": "nobody"}),
            )
        ]
    assert empty_key.status_code == 422 and empty_key.json()["errors"][0]["field"] == "query.key"
    assert [a.status_code for a in misspelt] == [422, 422, 422]
    assert local.json()["errors"] == [
        {
            "field": "query.until",
            "message": "Input should be a time with its UTC offset: add Z or +HH:MM,"
            " e.g. 2026-03-01T00:00:00Z",
        }
    ]
    usage, export, spend = (a.json() for a in misspelt)
    said = "no query parameter 'user' here: did you mean 'user_id'?"
    assert usage["errors"] == [{"field": "query.user", "message": said}]
    assert "this route takes:" in usage["detail"] and "user_id" in usage["detail"]
    assert export["errors"][0]["field"] == "query.user"
    assert spend["errors"][0]["field"] == "query.user_id"


def test_exports_past_the_caps_are_refused_until_one_ends(
    stack: LiveStack, viewer: httpx.Client, user: str
) -> None:
    """Exports at once are capped (each holds a database connection), per key and in all:
    the next one is a 429 with Retry-After saying which cap, and once the running ones
    have ended an export is served again. The running ones are held by a lock on the
    history table, which their COPY waits for after their answer has started."""
    params = {"user_id": user}
    others = [stack.new_key(ApiRole.VIEWER, f"exporter {i}") for i in range(2)]
    with (
        psycopg.connect(stack.settings.database_url) as holder,
        stack.client(others[0]) as second,
        stack.client(others[1]) as third,
    ):
        holder.execute("LOCK TABLE usage_history IN ACCESS EXCLUSIVE MODE")
        with contextlib.ExitStack() as running:
            held = [
                running.enter_context(client.stream("GET", "/api/v1/usage/export", params=params))
                for client in (viewer, second)
                for _ in range(MAX_EXPORTS_PER_KEY)
            ]
            assert len(held) == MAX_EXPORTS
            assert [answer.status_code for answer in held] == [200] * MAX_EXPORTS  # slots taken
            mine = viewer.get("/api/v1/usage/export", params=params)
            everyones = third.get("/api/v1/usage/export", params=params)
            for refused in (mine, everyones):
                assert refused.status_code == 429, refused.text
                assert refused.headers["content-type"] == "application/problem+json"
                assert refused.headers["retry-after"] == "5"
            assert mine.json()["detail"] == (
                f"{MAX_EXPORTS_PER_KEY} exports of this API key are running;"
                " retry when one has finished"
            )
            assert everyones.json()["detail"] == (
                f"{MAX_EXPORTS} exports are running; retry when one has finished"
            )
            holder.rollback()  # the running exports go on, and end
            header = held[0].read()
            assert header.startswith(b"event_id,") and header.count(b"\n") == 1  # no rows
            assert all(answer.read() == header for answer in held[1:])
    eventually(
        lambda: viewer.get("/api/v1/usage/export", params=params).status_code == 200,
        what="an export served once the others ended",
    )
