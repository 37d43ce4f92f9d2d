"""The console's pages over HTTP, on the real service: whatever a reader types into a
date field is answered with the page and an error next to that field, never a 500; the
alerts page lists the newest first and pages on to older ones, whatever their number."""

from __future__ import annotations

import html
import re
import uuid
from datetime import timedelta

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from events import Alert, AlertSeverity, AlertType, utc_now
from services.api.console.alerts import SHOWN

from http_support import csrf_token
from live import LiveStack


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/history", {"since": "0001-01-01T00:00", "tz": "Asia/Tokyo"}, "since"),
        ("/history", {"until": "9999-12-31T23:00", "tz": "America/Los_Angeles"}, "until"),
        ("/reports", {"kind": "custom", "start": "2026-01-01", "end": "9999-12-31"}, "end"),
        ("/reports", {"kind": "comparison", "start": "0001-01-01", "tz": "Asia/Tokyo"}, "start"),
    ],
)
def test_a_date_beyond_the_years_the_console_works_with_is_a_field_error(
    browser: httpx.Client, path: str, params: dict[str, str], field: str
) -> None:
    page = browser.get(path, params=params)
    assert page.status_code == 422, page.text
    assert page.headers["content-type"].startswith("text/html")
    error = f'<small class="error" id="e-{field}">enter a year from 1970 to 2999</small>'
    assert error in page.text, page.text


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/reports", {"kind": "trend", "tz": "Mars/Olympus"}),
        ("/reports", {"kind": "summary", "tz": "localtime"}),
        ("/history", {"since": "2026-01-01T00:00", "tz": "Mars/Olympus"}),
    ],
)
def test_a_reader_zone_the_server_does_not_know_is_said_not_counted_as_utc(
    browser: httpx.Client, path: str, params: dict[str, str]
) -> None:
    """The page names the reader's zone (its script fills it in): a report of UTC's days,
    or typed times read in UTC, would pass for that zone's."""
    page = browser.get(path, params=params)
    assert page.status_code == 422, page.text
    unknown = f"time zone {params['tz']!r} is not one this server knows"
    assert unknown in html.unescape(page.text), page.text
    if path == "/reports":
        assert "<table" not in page.text  # no report of UTC's days


def test_the_dashboards_days_and_months_say_they_are_utcs(browser: httpx.Client) -> None:
    """It counts UTC's day and month (the reports count the reader's zone): a reader in
    Tokyo must not take its "today" for hers."""
    page = browser.get("/")
    assert page.status_code == 200, page.text
    for heading in ("Spend this month", "Spend today", "Unpriced calls this month"):
        assert f'<h2>{heading} <span class="muted small">UTC</span></h2>' in page.text
    assert "count UTC days and months" in page.text


def test_the_policy_list_tells_the_readers_zone_from_a_policys_own(
    admin: httpx.Client, browser: httpx.Client
) -> None:
    """A custom period's bounds show in the reader's zone (app.js); the policy's own zone
    under them says it is the zone of its periods, not of the times shown above it."""
    policy_id = f"tokyo-{uuid.uuid4().hex[:8]}"
    policy = {
        "name": "Tokyo launch",
        "period": "custom",
        "custom_start": "2026-12-01T00:00:00+09:00",
        "custom_end": "2026-12-08T00:00:00+09:00",
        "timezone": "Asia/Tokyo",
        "limit_amount": "50",
    }
    assert admin.put(f"/api/v1/policies/{policy_id}", json=policy).status_code == 200
    page = browser.get("/policies")
    assert page.status_code == 200, page.text
    assert "Times in <span data-zone-name>UTC</span>" in page.text  # app.js names the zone
    (row,) = re.findall(rf'<tr id="p-{policy_id}".*?</tr>', page.text, re.S)
    assert '<time datetime="2026-11-30T15:00:00Z">' in row
    assert '<span class="muted small">periods of Asia/Tokyo</span>' in row


@pytest.mark.parametrize(("params", "zone"), [({}, "UTC"), ({"tz": "Asia/Tokyo"}, "Asia/Tokyo")])
def test_the_reports_page_names_the_zone_its_report_counted(
    browser: httpx.Client, params: dict[str, str], zone: str
) -> None:
    """A first visit sends no zone, so its summary counts UTC's month: the page said the
    reader's (its script filled in the reader's zone, whatever the report counted)."""
    page = browser.get("/reports", params=params)
    assert page.status_code == 200, page.text
    said = f'days, weeks and months of <span class="report-zone">{zone}</span>'
    assert said in page.text, page.text


def test_a_custom_report_of_any_range_ignores_the_comparisons_window(
    browser: httpx.Client,
) -> None:
    """The comparison's fields are hidden for other reports, and its default window (as
    long as the range, just before it) would start in 1840 here: neither is this report's."""
    params = {"kind": "custom", "start": "1970-01-01", "end": "2099-12-31", "tz": "UTC"}
    for hidden in ({}, {"previous_start": "not a date"}):
        page = browser.get("/reports", params={**params, **hidden})
        assert page.status_code == 200, page.text
        assert 'class="error"' not in page.text and "previous_start=" not in page.text


def test_the_alerts_page_shows_the_newest_and_pages_on_to_older_ones(
    stack: LiveStack, browser: httpx.Client
) -> None:
    """More alerts than a page lists (written straight into the read model: raising 205
    through the evaluator would take minutes), newer than any other test's."""
    base = utc_now() + timedelta(days=1)
    mine = [
        Alert(
            alert_id=uuid.uuid4(),
            alert_type=AlertType.THRESHOLD_WARNING,
            severity=AlertSeverity.WARNING,
            rule_id="paging",
            rule_name="paging",
            message=f"alert {i}",
            raised_at=base + timedelta(seconds=i),
        )
        for i in range(SHOWN + 5)
    ]
    with psycopg.connect(stack.settings.database_url) as conn:
        for seq, alert in enumerate(mine, 10**9):
            conn.execute(
                "INSERT INTO alerts (alert_id, stream_seq, raised_at, alert_type, severity,"
                " rule_id, subject, alert) VALUES (%s, %s, %s, %s, %s, %s, 'paging', %s)",
                (
                    alert.alert_id,
                    seq,
                    alert.raised_at,
                    alert.alert_type,
                    alert.severity,
                    alert.rule_id,
                    Jsonb(alert.model_dump(mode="json")),
                ),
            )

    first = browser.get("/alerts", params={"severity": "warning"})
    assert first.status_code == 200, first.text
    shown = [a for a in mine if str(a.alert_id) in first.text]
    assert shown == mine[5:]  # the newest page
    older = re.search(r'href="(/alerts\?[^"]+)" rel="next">Older', first.text)
    assert older, first.text
    second = browser.get(html.unescape(older[1]))
    assert second.status_code == 200, second.text
    assert [a for a in mine if str(a.alert_id) in second.text] == mine[:5]
    assert 'href="/alerts?severity=warning">Newest' in second.text


@pytest.mark.parametrize(
    ("action", "column", "said"),
    [
        ("acknowledge", "acknowledged", "Alert already acknowledged by alice."),
        ("resolve", "resolved", "Alert already resolved by alice."),
    ],
)
def test_acting_on_an_alert_another_admin_was_first_to_says_whose_stands(
    stack: LiveStack, browser: httpx.Client, action: str, column: str, said: str
) -> None:
    """A page opened before alice acknowledged (or resolved) the alert still offers the
    button: the console says hers stands, not that the signed-in admin did it."""
    alert = Alert(
        alert_id=uuid.uuid4(),
        alert_type=AlertType.LIMIT_EXCEEDED,
        severity=AlertSeverity.CRITICAL,
        rule_id="first-wins",
        rule_name="first wins",
        message="acted on twice",
        raised_at=utc_now(),
    )
    with psycopg.connect(stack.settings.database_url) as conn:
        conn.execute(
            "INSERT INTO alerts (alert_id, stream_seq, raised_at, alert_type, severity, rule_id,"
            f" subject, alert, {column}_by, {column}_at)"
            " VALUES (%s, 1, %s, %s, %s, %s, 'twice', %s, 'alice', now())",
            (
                alert.alert_id,
                alert.raised_at,
                alert.alert_type,
                alert.severity,
                alert.rule_id,
                Jsonb(alert.model_dump(mode="json")),
            ),
        )
    token = csrf_token(browser.get("/alerts").text)
    answer = browser.post(
        f"/alerts/{alert.alert_id}/{action}",
        data={"csrf_token": token, "next": "/alerts"},
        follow_redirects=True,
    )
    assert answer.status_code == 200, answer.text
    assert said in answer.text
    with psycopg.connect(stack.settings.database_url) as conn:
        by = conn.execute(
            f"SELECT {column}_by FROM alerts WHERE alert_id = %s", (alert.alert_id,)
        ).fetchone()
    assert by == ("alice",)
