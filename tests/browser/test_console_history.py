"""Usage history: filters, keyset pages, times in the reader's zone, and a CSV export of
the filtered range that holds exactly the API's rows for the same filters."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

from console_support import Pages, record, unique, wait_applied
from playwright.sync_api import Page, expect

from budget.periods import Period

from live import LiveStack
from support import start_of

ROWS = "#history-table tbody tr:not(.empty)"


def filter_history(page: Page, **fields: str) -> None:
    page.goto("/history")
    for label, value in fields.items():
        page.get_by_label(label, exact=True).fill(value)
    page.get_by_role("button", name="Filter").click()


def as_csv_cell(value: Any) -> str:
    """A JSON row's value as the CSV export writes it."""
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, dict) else str(value)


def test_filtered_export_equals_the_apis_rows(stack: LiveStack, pages: Pages) -> None:
    user, project = unique("user"), unique("project")
    start = datetime.now(UTC) - timedelta(hours=5)
    with stack.client() as http:
        seqs = [
            record(
                http,
                user,
                project_id=project,
                occurred_at=(start + timedelta(minutes=7 * i)).isoformat(),
                input_tokens=1000 + i,
                tags={"feature": f"f{i % 2}"},
            )
            for i in range(6)
        ]
        seqs.append(record(http, user, project_id=unique("other")))  # filtered out
        seqs.append(record(http, user, project_id=project, model="acme-x", provider="acme"))
        wait_applied(http, max(seqs))

        page = pages(stack.admin_key)
        filter_history(page, User=user, Project=project)
        expect(page.locator(ROWS)).to_have_count(7)
        expect(page.locator(ROWS).first.locator(".unpriced")).to_have_text("unpriced")

        link = page.get_by_role("link", name="CSV", exact=True)
        href = link.get_attribute("href") or ""
        assert href.startswith("/api/v1/usage/export?")
        with page.expect_download() as download:
            link.click()
        path = download.value.path()
        exported = list(csv.DictReader(io.StringIO(path.read_text())))

        query = dict(parse_qsl(urlsplit(href).query))
        assert query.pop("format") == "csv" and query.pop("as_of").isdigit()  # the browse's
        assert query == {"user_id": user, "project_id": project}
        api_rows = http.get("/api/v1/usage", params={**query, "limit": 1000}).json()["rows"]
    assert len(api_rows) == 7
    assert exported == [{k: as_csv_cell(v) for k, v in row.items()} for row in api_rows]


def test_older_pages_follow_the_cursor(stack: LiveStack, pages: Pages) -> None:
    user = unique("user")
    start = datetime.now(UTC) - timedelta(days=2)
    with stack.client() as http:
        seqs = [
            record(http, user, occurred_at=(start + timedelta(minutes=i)).isoformat())
            for i in range(55)
        ]
        wait_applied(http, max(seqs))
    page = pages(stack.admin_key)
    filter_history(page, User=user)
    expect(page.locator(ROWS)).to_have_count(50)
    newest = page.locator(ROWS).first.get_attribute("data-event-id")
    page.get_by_role("link", name="Older").click()
    expect(page).to_have_url(re.compile(r"cursor="))
    expect(page.locator(ROWS)).to_have_count(5)
    expect(page.get_by_role("link", name="Older")).to_have_count(0)
    page.get_by_role("link", name="Newest").click()
    expect(page.locator(ROWS).first).to_have_attribute("data-event-id", newest or "")


def test_times_are_shown_and_read_in_the_zone_the_reader_picks(
    stack: LiveStack, pages: Pages
) -> None:
    user = unique("user")
    at = start_of(Period.DAILY, ago=2) + timedelta(hours=3, minutes=30)
    with stack.client() as http:
        wait_applied(http, record(http, user, occurred_at=at.isoformat()))
    page = pages(stack.admin_key, timezone_id="Europe/Lisbon", locale="en-US")
    filter_history(page, User=user)
    time = page.locator(ROWS).first.locator("time")
    expect(time).to_have_text(shown_in_en_us(at, ZoneInfo("Europe/Lisbon")))

    page.locator("#tz-picker").select_option("Asia/Tokyo")  # kept for the next pages
    expect(time).to_contain_text("12:30 PM")
    tokyo = at.astimezone(ZoneInfo("Asia/Tokyo"))
    before, after = (f"{tokyo:%Y-%m-%d}T{hour}:00" for hour in (12, 13))
    filter_history(page, User=user, From=before)  # 03:00 UTC in Tokyo
    expect(page.locator(ROWS)).to_have_count(1)
    expect(page.get_by_label("From")).to_have_value(before)
    filter_history(page, User=user, From=after)  # 04:00 UTC: after the call
    expect(page.locator(ROWS)).to_have_count(0)
    filter_history(page, User=user, From=after, Until=before)
    expect(page.locator("#e-until")).to_have_text("must be after From")
    # no export of another range than the one asked for (or of one the API refuses)
    expect(page.get_by_role("group", name="Export")).to_have_count(0)


def shown_in_en_us(at: datetime, zone: ZoneInfo) -> str:
    """``at`` as the console shows it in ``zone`` to an en-US reader: the year only when
    it is not the current one there."""
    local = at.astimezone(zone)
    day = f"{local:%b} {local.day}"
    if local.year != datetime.now(zone).year:
        day += f", {local.year}"
    return f"{day}, {local.hour % 12 or 12}:{local:%M %p}"
