"""Alerts over HTTP: raised by the evaluator, delivered live on the SSE feed, listed with
filters, acknowledged and resolved; alert rules added, replaced and removed."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from typing import Any

import httpx
import psycopg

from services.api.routes.alerts import _DELIVERED_SINCE

from http_support import call, posted_at_once
from live import LiveStack


def read_feed(
    stack: LiveStack,
    key: str,
    into: queue.Queue[dict[str, Any]],
    ready: threading.Event,
    last_event_id: str | None = None,
) -> None:
    """Put each alert the feed sends into ``into`` until the stack stops."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with (
        stack.client(key, timeout=httpx.Timeout(5, read=60)) as http,
        contextlib.suppress(httpx.TransportError),  # the stack stopped at the module's end
        http.stream("GET", "/api/v1/alerts/stream", headers=headers) as feed,
    ):
        assert feed.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in feed.iter_lines():
            if line == ": connected":
                ready.set()
            elif line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "alert":
                into.put(json.loads(line.removeprefix("data: ")))


def open_feed(
    stack: LiveStack, key: str, last_event_id: str | None = None
) -> queue.Queue[dict[str, Any]]:
    arrived: queue.Queue[dict[str, Any]] = queue.Queue()
    ready = threading.Event()
    threading.Thread(
        target=read_feed, args=(stack, key, arrived, ready, last_event_id), daemon=True
    ).start()
    assert ready.wait(30), "the feed did not open"
    return arrived


def raise_alerts(admin: httpx.Client, ingest: httpx.Client, user: str) -> str:
    """A $0.01 policy for ``user`` and $0.015 of usage: a warning, then the limit passed."""
    policy_id = f"small-{user}"
    policy = {"name": "small", "scope": "user", "scope_key": user, "limit_amount": "0.01"}
    admin.put(f"/api/v1/policies/{policy_id}", json=policy).raise_for_status()
    ingest.post("/api/v1/usage", json=call(user)).raise_for_status()  # $0.0075: 75 %
    ingest.post("/api/v1/usage", json=call(user)).raise_for_status()  # $0.015: 150 %
    return policy_id


def alerts_of(feed: queue.Queue[dict[str, Any]], policy_id: str) -> list[dict[str, Any]]:
    """The feed's alerts of ``policy_id`` up to its limit_exceeded one; fails on any
    other policy's alert (none other is being raised)."""
    got: list[dict[str, Any]] = []
    while not any(a["alert_type"] == "limit_exceeded" for a in got):
        alert = feed.get(timeout=60)
        assert alert["policy_id"] == policy_id, alert
        got.append(alert)
    return got


def test_the_feed_starts_at_the_connection_and_resumes_after_the_last_event(
    stack: LiveStack, viewer: httpx.Client, admin: httpx.Client, ingest: httpx.Client
) -> None:
    key = viewer.headers["authorization"].removeprefix("Bearer ")
    first = open_feed(stack, key)
    earlier = alerts_of(first, raise_alerts(admin, ingest, "feed-user-1"))
    # A new connection gets nothing of before it: its first alert is the next one raised.
    later_feed = open_feed(stack, key)
    policy_id = raise_alerts(admin, ingest, "feed-user-2")
    later = alerts_of(later_feed, policy_id)
    # A reconnect naming the first connection's first alert gets everything after it.
    resumed = alerts_of(open_feed(stack, key, earlier[0]["alert_id"]), earlier[0]["policy_id"])
    assert [a["alert_id"] for a in resumed] == [a["alert_id"] for a in earlier[1:]]
    assert alerts_of(first, policy_id) == later


def test_a_feed_ends_when_its_key_is_revoked(stack: LiveStack, admin: httpx.Client) -> None:
    """Revoking takes effect at once, on a feed already open too: it ends (and a reconnect
    is refused)."""
    made = admin.post("/api/v1/keys", json={"name": "feed reader", "role": "viewer"}).json()
    ready, ended = threading.Event(), threading.Event()

    def read() -> None:
        with (
            stack.client(made["key"], timeout=httpx.Timeout(5, read=60)) as http,
            http.stream("GET", "/api/v1/alerts/stream") as feed,
        ):
            for line in feed.iter_lines():
                if line == ": connected":
                    ready.set()
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    assert ready.wait(30), "the feed did not open"
    assert admin.delete(f"/api/v1/keys/{made['key_id']}").status_code == 204
    assert ended.wait(30), "the feed went on after its key was revoked"
    with stack.client(made["key"]) as http:
        assert http.get("/api/v1/alerts/stream").status_code == 401


def test_an_alert_arrives_live_and_is_acknowledged_then_resolved(
    stack: LiveStack, admin: httpx.Client, viewer: httpx.Client, ingest: httpx.Client, user: str
) -> None:
    feed = open_feed(stack, viewer.headers["authorization"].removeprefix("Bearer "))
    policy_id = raise_alerts(admin, ingest, user)
    live = alerts_of(feed, policy_id)
    assert {a["alert_type"] for a in live} >= {"threshold_warning", "limit_exceeded"}

    def alerts(**params: str) -> list[dict[str, Any]]:
        """Every page of the alerts listed with ``params``, one alert a page."""
        found: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = viewer.get(
                "/api/v1/alerts",
                params={**params, "limit": "1", **({"cursor": cursor} if cursor else {})},
            ).json()
            found += page["alerts"]
            cursor = page["next_cursor"]
            if cursor is None:
                return found

    listed = alerts(policy_id=policy_id)
    assert sorted(a["alert"]["alert_id"] for a in listed) == sorted(a["alert_id"] for a in live)
    raised = [a["alert"]["raised_at"] for a in listed]
    assert raised == sorted(raised, reverse=True)  # newest first
    exceeded = alerts(policy_id=policy_id, alert_type="limit_exceeded")
    assert [a["alert"]["alert_type"] for a in exceeded] == ["limit_exceeded"]
    assert alerts(policy_id=policy_id, severity="info") == []
    bad = viewer.get("/api/v1/alerts", params={"cursor": "nonsense"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.cursor"

    alert_id = exceeded[0]["alert"]["alert_id"]
    acked = admin.post(f"/api/v1/alerts/{alert_id}/acknowledge", json={"by": "ops@example.com"})
    assert acked.status_code == 204
    detail = viewer.get(f"/api/v1/alerts/{alert_id}").json()
    assert detail["alert"]["acknowledged_by"] == "ops@example.com"
    assert {d["channel"] for d in detail["deliveries"]} >= {"ui"}
    unacked = alerts(policy_id=policy_id, unacknowledged_only="true")
    assert alert_id not in {a["alert"]["alert_id"] for a in unacked}
    acked_only = alerts(policy_id=policy_id, acknowledged_only="true")
    assert [a["alert"]["alert_id"] for a in acked_only] == [alert_id]

    assert admin.post(f"/api/v1/alerts/{alert_id}/resolve").status_code == 204
    resolved = viewer.get(f"/api/v1/alerts/{alert_id}").json()["alert"]
    assert resolved["resolved_at"] is not None
    assert resolved["resolved_by"] == "first admin (budget up)"  # the admin key's name
    open_ids = {a["alert"]["alert_id"] for a in alerts(resolved="false")}
    assert alert_id not in open_ids
    missing = admin.post("/api/v1/alerts/00000000-0000-0000-0000-000000000000/resolve")
    assert missing.status_code == 404


def test_filters_no_alert_can_match_are_refused_naming_the_field(viewer: httpx.Client) -> None:
    both = viewer.get(
        "/api/v1/alerts", params={"unacknowledged_only": "true", "acknowledged_only": "true"}
    )
    assert both.status_code == 422, both.text
    assert both.headers["content-type"] == "application/problem+json"
    assert both.json()["errors"][0]["field"] == "query.acknowledged_only"
    no_policy = viewer.get("/api/v1/alerts", params={"policy_id": ""})  # no policy's id
    assert no_policy.status_code == 422, no_policy.text
    assert no_policy.json()["errors"][0]["field"] == "query.policy_id"


def test_a_live_feed_reads_only_what_was_delivered_since_it_last_looked(
    stack: LiveStack,
) -> None:
    """Each open feed looks four times a second, and the feed keeps every alert ever
    delivered: a look must not read them all."""
    with psycopg.connect(stack.settings.database_url) as conn:
        conn.execute(
            "INSERT INTO alert_feed (alert_id, payload, delivered_at)"
            " SELECT gen_random_uuid(), '{}', now() - interval '1 day' - n * interval '1 minute'"
            " FROM generate_series(1, 20000) AS n"
        )
        conn.execute("ANALYZE alert_feed")
        since = conn.execute("SELECT now() - interval '5 seconds'").fetchone()
        plan = conn.execute(b"EXPLAIN " + _DELIVERED_SINCE.encode(), since).fetchall()
    shown = "\n".join(line for (line,) in plan)
    assert "Seq Scan" not in shown and "alert_feed_delivered_at" in shown, shown


def test_rules_are_added_replaced_and_removed(
    admin: httpx.Client, viewer: httpx.Client, user: str
) -> None:
    rule = {
        "rule_id": f"r-{user}",
        "name": "High spend",
        "threshold_percent": "75",
        "severity": "warning",
        "channels": ["ui", "log"],
        "cooldown_minutes": 60,
    }
    created = admin.post("/api/v1/rules", json=rule)
    assert created.status_code == 201, created.text
    assert admin.post("/api/v1/rules", json=rule).status_code == 409
    rules = {r["rule_id"]: r for r in viewer.get("/api/v1/rules").json()}
    assert rules[rule["rule_id"]]["cooldown_minutes"] == 60

    replaced = admin.put(f"/api/v1/rules/{rule['rule_id']}", json={**rule, "cooldown_minutes": 5})
    assert replaced.json()["cooldown_minutes"] == 5
    rules = {r["rule_id"]: r for r in viewer.get("/api/v1/rules").json()}
    assert rules[rule["rule_id"]]["cooldown_minutes"] == 5

    wrong = admin.post(
        "/api/v1/rules", json={"name": "x", "alert_type": "anomaly", "threshold_percent": "5"}
    )
    assert wrong.status_code == 422 and "threshold_percent" in wrong.json()["detail"]
    # an anomaly rule watches totals: its policy_ids would do nothing
    useless = {"name": "x", "alert_type": "anomaly", "policy_ids": ["team"]}
    for answer in (
        admin.post("/api/v1/rules", json=useless),
        admin.put(f"/api/v1/rules/u-{user}", json=useless),
    ):
        assert answer.status_code == 422, answer.text
        assert [e["field"] for e in answer.json()["errors"]] == ["body.policy_ids"]
    assert f"u-{user}" not in {r["rule_id"] for r in viewer.get("/api/v1/rules").json()}

    assert admin.delete(f"/api/v1/rules/{rule['rule_id']}").status_code == 204
    assert rule["rule_id"] not in {r["rule_id"] for r in viewer.get("/api/v1/rules").json()}
    assert admin.delete(f"/api/v1/rules/{rule['rule_id']}").status_code == 404


def test_a_rule_watching_a_policy_that_does_not_exist_is_refused_naming_it(
    admin: httpx.Client, viewer: httpx.Client, user: str
) -> None:
    """A typo in policy_ids made a rule that never fired, and nothing said so."""
    policy = {"policy_id": f"p-{user}", "name": "team", "limit_amount": "10"}
    assert admin.post("/api/v1/policies", json=policy).status_code == 201
    rule = {"name": "x", "threshold_percent": "50", "policy_ids": [f"p-{user}", "tpyo"]}
    for answer in (
        admin.post("/api/v1/rules", json={**rule, "rule_id": f"r-{user}"}),
        admin.put(f"/api/v1/rules/r-{user}", json=rule),
    ):
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0]["field"] == "body.policy_ids"
        assert "'tpyo'" in answer.json()["detail"] and f"p-{user}" not in answer.json()["detail"]
    assert f"r-{user}" not in {r["rule_id"] for r in viewer.get("/api/v1/rules").json()}
    known = admin.put(f"/api/v1/rules/r-{user}", json={**rule, "policy_ids": [f"p-{user}"]})
    assert known.status_code == 200, known.text
    assert admin.delete(f"/api/v1/rules/r-{user}").status_code == 204


async def test_of_concurrent_rule_creations_of_one_id_exactly_one_wins(
    stack: LiveStack, user: str
) -> None:
    bodies = [
        {"rule_id": f"r-{user}", "name": f"try {n}", "threshold_percent": str(50 + n)}
        for n in range(10)
    ]
    statuses = await posted_at_once(stack, "/api/v1/rules", bodies)
    assert sorted(statuses) == [201] + [409] * 9, statuses
    with stack.client() as admin:
        rules = {r["rule_id"]: r for r in admin.get("/api/v1/rules").json()}
    assert rules[f"r-{user}"]["name"] == f"try {statuses.index(201)}"
