"""Reports, spend, prices and the system views over HTTP."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import nats
import pytest

from events import ApiRole

from http_support import call, eventually, spend_locked, waiting_on_spend
from live import LiveStack

NOW = datetime.now(UTC)
OUT_OF_RANGE = "is out of range: a time from 1900-01-01 up to 9000-01-01 (UTC) is accepted"


@pytest.fixture(scope="module")
def recorded(ingest: httpx.Client, viewer: httpx.Client) -> str:
    """Three calls by one user, two days ago, yesterday and now, counted in the reports."""
    user = "reports-user"
    for days in (2, 1, 0):
        at = (NOW - timedelta(days=days)).isoformat()
        ingest.post("/api/v1/usage", json=call(user, occurred_at=at)).raise_for_status()

    def counted() -> bool:
        report = viewer.get(
            "/api/v1/reports/custom",
            params={
                "start": (NOW - timedelta(days=3)).isoformat(),
                "end": (NOW + timedelta(hours=1)).isoformat(),
                "group_by": "user",
            },
        ).json()
        rows = report["tables"][0]["rows"]
        return any(r[0] == user and r[2] == 3 for r in rows)

    eventually(counted, what="the reports worker rolled the calls up")
    return user


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("summary", {"period": "monthly"}),
        ("trend", {"days": 7, "interval": "daily"}),
        ("projection", {"days": 10}),
        (
            "custom",
            {
                "start": (NOW - timedelta(days=3)).isoformat(),
                "end": NOW.isoformat(),
                "group_by": ["provider", "model"],
            },
        ),
        (
            "comparison",
            {
                "start": (NOW - timedelta(days=1)).isoformat(),
                "end": NOW.isoformat(),
                "previous_start": (NOW - timedelta(days=2)).isoformat(),
                "previous_end": (NOW - timedelta(days=1)).isoformat(),
            },
        ),
    ],
)
def test_every_report_in_every_format(
    viewer: httpx.Client, recorded: str, kind: str, params: dict[str, object]
) -> None:
    answer = viewer.get(f"/api/v1/reports/{kind}", params=params)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["tables"] and report["title"]
    main = report["tables"][0]
    as_csv = viewer.get(f"/api/v1/reports/{kind}", params={**params, "format": "csv"})
    assert as_csv.headers["content-type"].startswith("text/csv")
    lines = list(csv.reader(io.StringIO(as_csv.text)))
    assert main["columns"] in lines
    as_md = viewer.get(f"/api/v1/reports/{kind}", params={**params, "format": "md"})
    assert as_md.headers["content-type"].startswith("text/markdown")
    assert as_md.text.startswith("#") and "| " + " | ".join(main["columns"]) + " |" in as_md.text


def test_a_csv_report_carries_its_notes_in_a_header_and_links_the_whole_report(
    viewer: httpx.Client, recorded: str
) -> None:
    """A CSV has no place for the notes (and writing them in would break it for spreadsheet
    tools): they come in the Report-Notes header, with a link to the report as JSON."""
    params = {"days": 7, "tz": "Asia/Kathmandu"}
    whole = viewer.get("/api/v1/reports/trend", params=params).json()
    assert "days in time zone Asia/Kathmandu" in whole["notes"]
    as_csv = viewer.get("/api/v1/reports/trend", params={**params, "format": "csv"})
    assert as_csv.status_code == 200, as_csv.text
    assert as_csv.headers["Report-Notes"] == ", ".join(f'"{n}"' for n in whole["notes"])
    assert as_csv.headers["Content-Disposition"] == 'attachment; filename="trend-report.csv"'
    link = re.fullmatch(
        r'<([^>]+)>; rel="describedby"; type="application/json"', as_csv.headers["Link"]
    )
    assert link, as_csv.headers["Link"]
    assert viewer.get(link[1]).json() == whole
    [header, *rows] = list(csv.reader(io.StringIO(as_csv.text)))
    assert header == whole["tables"][0]["columns"] and len(rows) == 7


def test_report_arguments_are_checked(viewer: httpx.Client) -> None:
    missing = viewer.get("/api/v1/reports/custom")
    assert missing.status_code == 422
    assert missing.json()["errors"] == [
        {"field": "query.start", "message": "this report needs start"}
    ]
    unknown = viewer.get("/api/v1/reports/weekly-ish")
    assert unknown.json()["errors"][0]["field"] == "path.kind"
    grouping = viewer.get(
        "/api/v1/reports/custom",
        params={"start": NOW.isoformat(), "end": NOW.isoformat(), "group_by": "colour"},
    )
    assert grouping.status_code == 422 and "colour" in grouping.json()["detail"]
    assert grouping.json()["errors"][0]["field"] == "query.group_by"
    backwards = viewer.get(
        "/api/v1/reports/custom",
        params={"start": NOW.isoformat(), "end": (NOW - timedelta(days=1)).isoformat()},
    )
    assert backwards.json()["errors"][0]["field"] == "query.end"
    too_late = viewer.get(
        "/api/v1/reports/custom",
        params={"start": NOW.isoformat(), "end": "9999-12-31T23:00:00Z"},
    )
    assert too_late.status_code == 422
    [error] = too_late.json()["errors"]
    assert error["field"] == "query.end"
    assert error["message"].endswith(OUT_OF_RANGE), error


def test_reports_count_the_days_of_the_zone_asked_for(viewer: httpx.Client, recorded: str) -> None:
    kathmandu = viewer.get(
        "/api/v1/reports/trend", params={"days": 7, "tz": "Asia/Kathmandu"}
    ).json()
    assert "days in time zone Asia/Kathmandu" in kathmandu["notes"]
    assert kathmandu["start"].endswith("T00:00:00+05:45")  # midnight in Kathmandu
    wrong = viewer.get("/api/v1/reports/summary", params={"tz": "Mars/Olympus"})
    assert wrong.status_code == 422
    assert wrong.json()["detail"] == "query.tz: unknown time zone 'Mars/Olympus'; use an IANA name"
    assert wrong.json()["errors"][0]["field"] == "query.tz"
    host_own = viewer.get("/api/v1/reports/trend", params={"tz": "localtime"})  # the server's
    assert host_own.status_code == 422
    assert host_own.json()["detail"].startswith("query.tz: time zone 'localtime' is this host's")


def test_spend_by_scope_and_key(viewer: httpx.Client, recorded: str) -> None:
    rows = viewer.get(
        "/api/v1/spend", params={"period": "daily", "scope": "user", "key": recorded}
    ).json()
    assert [(r["scope"], r["scope_key"], r["cost"], r["requests"]) for r in rows] == [
        ("user", recorded, "0.00750000", 1)
    ]
    # A key without a scope: that key's rows in whichever scope has it, and only those.
    assert any(r["scope"] == "global" for r in viewer.get("/api/v1/spend").json())
    any_scope = viewer.get("/api/v1/spend", params={"period": "daily", "key": recorded}).json()
    assert [(r["scope"], r["scope_key"], r["requests"]) for r in any_scope] == [
        ("user", recorded, 1)
    ]
    earlier = viewer.get(
        "/api/v1/spend",
        params={
            "period": "daily",
            "scope": "user",
            "key": recorded,
            "at": (NOW - timedelta(days=2)).isoformat(),
        },
    ).json()
    assert earlier[0]["period_start"] == (NOW - timedelta(days=2)).date().isoformat()
    naive = viewer.get("/api/v1/spend", params={"at": "2026-01-01T00:00:00"})
    assert naive.json()["errors"][0]["field"] == "query.at"
    too_late = viewer.get("/api/v1/spend", params={"at": "9999-12-31T23:59:59Z"})
    assert too_late.status_code == 422
    [error] = too_late.json()["errors"]
    assert error["field"] == "query.at" and error["message"].endswith(OUT_OF_RANGE), error


def test_spend_of_calls_without_a_price_is_null_never_0(
    ingest: httpx.Client, viewer: httpx.Client, user: str
) -> None:
    model = f"no-price-{user}"
    ingest.post("/api/v1/usage", json=call(user, model=model)).raise_for_status()
    ingest.post("/api/v1/usage", json=call(user)).raise_for_status()  # priced: $0.0075

    def rows() -> dict[str, dict[str, object]] | None:
        found = viewer.get("/api/v1/spend", params={"period": "daily", "key": user}).json()
        found += viewer.get("/api/v1/spend", params={"period": "daily", "key": model}).json()
        mine = {r["scope_key"]: r for r in found}
        return mine if mine.get(user, {}).get("requests") == 2 and model in mine else None

    shown = eventually(rows, what="both calls counted")
    assert [shown[model][k] for k in ("cost", "requests", "unpriced_requests")] == [None, 1, 1]
    assert [shown[user][k] for k in ("cost", "requests", "unpriced_requests")] == [
        "0.00750000",
        2,
        1,
    ]


def test_prices_and_providers(viewer: httpx.Client) -> None:
    providers = {p["provider"]: p["models"] for p in viewer.get("/api/v1/providers").json()}
    assert providers["openai"] > 0 and providers["anthropic"] > 0
    # genai-prices names providers none of whose models it prices (fireworks): not listed
    assert all(models > 0 for models in providers.values())
    assert "gpt-4o" in viewer.get("/api/v1/providers/OpenAI/models").json()
    price = viewer.get("/api/v1/prices/gpt-4o").json()
    assert price["provider"] == "openai" and price["per_million"]["input_uncached"] == "2.5"
    unpriced = viewer.get("/api/v1/prices/no-such-model")
    assert unpriced.status_code == 404 and "unpriced" in unpriced.json()["detail"]
    assert viewer.get("/api/v1/providers/nobody/models").status_code == 404
    misspelt = viewer.get("/api/v1/providers/opnai/models")
    assert misspelt.status_code == 404 and "did you mean 'openai'?" in misspelt.json()["detail"]
    # a priced model under a misspelt provider: the provider is what is wrong
    typo = viewer.get("/api/v1/prices/gpt-4o", params={"provider": "opnai"})
    assert typo.status_code == 404
    assert typo.json()["detail"].startswith(
        "'gpt-4o' has no price: provider 'opnai' is unknown: did you mean 'openai'? no price in"
    ), typo.json()


def test_system_views(stack: LiveStack, admin: httpx.Client) -> None:
    projections = {p["name"]: p for p in admin.get("/api/v1/projections").json()}
    assert set(projections) >= {"spend", "history", "policies", "alerts", "reports", "api_keys"}
    assert all(p["live"] and p["lag"] >= 0 for p in projections.values())
    services = {s["name"]: s["ok"] for s in admin.get("/api/v1/services").json()}
    assert services == {"nats": True, "postgresql": True, "enforcer": True, "query service": True}
    assert admin.get("/api/v1/dead-letters").json() == []

    async def publish_garbage() -> None:
        nc = await nats.connect(stack.settings.nats_url)
        subject = stack.settings.topology.event_subject("usage.recorded")
        await nc.jetstream().publish(subject, b"{not json")
        await nc.close()

    asyncio.run(publish_garbage())
    usage_readers = {"spend-v1", "history-v1", "alerts-v1", "reports-v1"}

    def every_reader_dead_lettered() -> list[dict[str, str]] | None:
        letters: list[dict[str, str]] = admin.get("/api/v1/dead-letters").json()
        return letters if {x["consumer"] for x in letters} == usage_readers else None

    letters = eventually(every_reader_dead_lettered, what="each usage reader's dead letter")
    assert all(letter["data"] == "{not json" and letter["reason"] for letter in letters)
    assert admin.get("/readyz").json() == {
        "ready": True,
        "checks": {"nats": True, "postgresql": True},
    }


def test_one_keys_slow_reads_leave_another_key_answered(stack: LiveStack) -> None:
    greedy = stack.new_key(ApiRole.VIEWER, "greedy")
    in_flight = 8  # caller_query_in_flight's default: as many as the API's connections

    def read_spend() -> int:
        with stack.client(greedy) as viewer:
            return viewer.get("/api/v1/spend").status_code

    with spend_locked(stack) as lock, ThreadPoolExecutor(in_flight) as pool:
        held = [pool.submit(read_spend) for _ in range(in_flight)]
        eventually(lambda: waiting_on_spend(stack) > 0, what="the greedy key's reads wait")
        with stack.client(stack.new_key(ApiRole.VIEWER, "polite"), timeout=10) as polite:
            assert polite.get("/api/v1/policies").status_code == 200
        lock.rollback()
        assert [f.result() for f in held] == [200] * in_flight
