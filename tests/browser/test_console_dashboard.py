"""The dashboard follows usage as it is recorded: budget bars and totals move, alerts
arrive from the live feed, without a reload; unpriced calls are counted, never $0."""

from __future__ import annotations

import contextlib
import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
from console_support import Pages, record, unique, wait_applied
from playwright.sync_api import Page, expect

from events import ApiRole

from live import LiveStack

LIVE = 15_000
"""Milliseconds to wait for a live change: a 2 s poll after the projections apply."""


def user_policy(http: httpx.Client, user: str, limit: str) -> tuple[str, str]:
    """A monthly policy limiting ``user``: its id and name."""
    policy_id, name = unique("cap"), f"Cap for {user}"
    body = {"name": name, "scope": "user", "scope_key": user, "limit_amount": limit}
    http.put(f"/api/v1/policies/{policy_id}", json=body).raise_for_status()
    return policy_id, name


def mark_loaded(page: Page) -> None:
    """A flag a reload would drop: the page must still carry it afterwards."""
    page.evaluate("window.loadedOnce = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.loadedOnce") is True


def test_budget_bars_and_totals_move_as_usage_arrives(stack: LiveStack, pages: Pages) -> None:
    user = unique("user")
    with stack.client() as http:
        policy_id, _ = user_policy(http, user, "1")
        page = pages(stack.admin_key)
        bar = page.locator(f'.bar-row[data-policy="{policy_id}"][data-key="{user}"]')
        expect(bar).to_have_attribute("data-spent", "0")
        expect(bar).to_have_attribute("data-state", "ok")
        month = page.locator('[data-total="month"]')
        before = month.inner_text()
        mark_loaded(page)

        record(http, user)  # gpt-4o, 1000 in / 500 out: $0.0075
        expect(bar).not_to_have_attribute("data-spent", "0", timeout=LIVE)
        assert Decimal(bar.get_attribute("data-spent") or "") == Decimal("0.0075")
        expect(month).not_to_have_text(before, timeout=LIVE)

        record(http, user, input_tokens=100_000, output_tokens=80_000)  # $1.05: over $1
        expect(bar).to_have_attribute("data-state", "exceeded", timeout=LIVE)
        expect(bar.locator(".bar-figures")).to_contain_text("$1.06")
        expect(bar.locator(".bar-figures")).to_contain_text("105.8%")
        assert_not_reloaded(page)


def test_an_alert_appears_live_and_is_acknowledged(stack: LiveStack, pages: Pages) -> None:
    user = unique("user")
    with stack.client() as http:
        policy_id, name = user_policy(http, user, "0.005")
        page = pages(stack.admin_key)
        # The feed sends what is delivered from the moment it connects.
        expect(page.locator("body")).to_have_attribute("data-alert-stream-state", "open")
        mark_loaded(page)

        record(http, user)  # $0.0075: 150 % of the limit
        expect(page.locator(".toast", has_text=name).first).to_be_visible(timeout=30_000)
        limit_reached = page.get_by_text("Limit reached", exact=True)
        item = page.locator("#active-alerts .alert-item", has_text=name).filter(has=limit_reached)
        expect(item).to_be_visible(timeout=LIVE)
        expect(item).to_contain_text("open")
        assert_not_reloaded(page)

        signed_in_as = page.locator(".who .name").inner_text()
        for toast in reversed(page.locator(".toast").all()):  # they cover the alerts' buttons
            toast.get_by_role("button", name="Dismiss").click()
        # The button names its alert: not one of many "Acknowledge"s to a screen reader.
        page.get_by_role("button", name=f"Acknowledge: Limit reached ({name})").click()
        expect(page.locator(".flash")).to_have_text(f"Alert acknowledged by {signed_in_as}.")
        expect(item).to_contain_text(f"acknowledged by {signed_in_as}")
        stored = http.get("/api/v1/alerts", params={"policy_id": policy_id}).json()["alerts"]
        [limit_alert] = [a for a in stored if a["alert"]["alert_type"] == "limit_exceeded"]
        assert limit_alert["acknowledged_by"] == signed_in_as


def test_a_top_spender_leads_to_its_calls(stack: LiveStack, pages: Pages) -> None:
    user = unique("big-spender")
    with stack.client() as http:  # $7.50: the month's top user in this stack
        wait_applied(http, record(http, user, input_tokens=1_000_000, output_tokens=500_000))
    page = pages(stack.admin_key)
    page.goto("/")
    users = page.locator(".breakdown .top", has=page.get_by_role("heading", name="Users"))
    users.get_by_role("link", name=user).click()
    expect(page).to_have_url(re.compile(rf"/history\?user_id={user}$"))
    expect(page.get_by_label("User")).to_have_value(user)
    expect(page.locator("#history-table tbody tr:not(.empty)")).to_have_count(1)


def test_unpriced_calls_are_counted_and_shown_as_unpriced(stack: LiveStack, pages: Pages) -> None:
    user = unique("user")
    page = pages(stack.admin_key)
    unpriced = page.locator('[data-total="unpriced"]')
    before = int(unpriced.inner_text().replace(",", ""))
    with stack.client() as http:
        record(http, user, model="acme-unreleased-1", provider="acme")
    expect(unpriced).to_have_text(str(before + 1), timeout=LIVE)
    row = page.locator("#recent tr", has_text=user)
    expect(row.locator(".unpriced")).to_have_text("unpriced")
    expect(row).not_to_contain_text("$0")


def test_the_chart_shows_30_days_and_the_forecast_to_the_months_end(
    stack: LiveStack, pages: Pages
) -> None:
    user = unique("user")
    now = datetime.now(UTC)
    with stack.client() as http:
        seqs = [
            record(http, user, occurred_at=(now - timedelta(days=days)).isoformat())
            for days in range(1, 8)
        ]
        wait_applied(http, max(seqs))
    page = pages(stack.admin_key)
    page.wait_for_function("() => window.Chart && Object.keys(Chart.instances).length === 1")
    chart = page.evaluate(
        """() => {
            const chart = Object.values(Chart.instances)[0];
            return {
                labels: chart.data.labels,
                series: chart.data.datasets.map(
                    d => [d.style, d.data.filter(v => v !== null).length]
                ),
            };
        }"""
    )
    today = now.date()
    assert chart["labels"][0] == (today - timedelta(days=29)).isoformat()
    month_end = (today.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    assert chart["labels"][-1] == month_end.isoformat()
    styles = dict(chart["series"])
    assert styles["bar"] == 30  # a bar for each day, $0 included
    ahead = (month_end - today).days + 1
    assert styles["forecast"] == styles["low"] == styles["high"] == ahead
    expect(page.get_by_text("This month, projected:")).to_be_visible()


def test_the_charts_tooltip_shows_an_amount_under_a_cent_as_the_tables_do(
    stack: LiveStack, pages: Pages
) -> None:
    """A day of calls costing fractions of a cent is "<$0.01" in the chart's tooltip, as
    in every table, not "$0.00" (which reads as nothing spent)."""
    page = pages(stack.admin_key)
    page.wait_for_function("() => window.Chart && Object.keys(Chart.instances).length === 1")
    shown = page.evaluate(
        """() => {
            const chart = Object.values(Chart.instances)[0];
            const label = chart.options.plugins.tooltip.callbacks.label;
            return [0.000075, 0.004, 0.005, 0, 12.5].map(
                raw => label({dataset: {label: "Spend"}, raw: raw})
            );
        }"""
    )
    amounts = ["<$0.01", "<$0.01", "$0.01", "$0.00", "$12.50"]
    assert shown == [f"Spend: {amount}" for amount in amounts]


def test_a_refresh_that_fails_says_why_until_one_succeeds(stack: LiveStack, pages: Pages) -> None:
    """The live panels keep their figures when a refresh fails: the page says so, with the
    server's reason, instead of looking live. Here the reason is real: the key's reads are
    spent (a 429), by requests of its own beside the page's polls."""
    key = stack.new_key(ApiRole.VIEWER, unique("dashboard-reader"))
    page = pages(key)
    page.goto("/")
    problem = page.locator("#refresh-problem")
    expect(problem).to_be_hidden()
    deadline = time.monotonic() + 30
    with stack.client(key) as http:
        while not problem.is_visible():  # until a poll lands while the burst is spent
            assert time.monotonic() < deadline, "no poll was refused"
            for _ in range(20):
                http.get("/api/v1/policies")
    expect(problem).to_contain_text("too many requests from this API key")
    expect(problem).to_contain_text("may be out of date")
    expect(problem).to_be_hidden(timeout=LIVE)  # the next poll within the limits clears it


def test_a_refused_alert_feed_is_said_and_tried_again(stack: LiveStack, pages: Pages) -> None:
    """A tab past the key's live feeds (api_feeds_per_key) gets no alerts live: the page
    says so, instead of looking live, and has them again once a feed closes."""
    key = stack.new_key(ApiRole.VIEWER, unique("many-tabs"))
    timeout = httpx.Timeout(5, read=120)
    with contextlib.ExitStack() as held, stack.client(key, timeout=timeout) as tabs:
        lines = []  # kept: a line iterator's end closes its feed
        for _ in range(stack.settings.api_feeds_per_key):  # the key's other tabs
            feed = held.enter_context(tabs.stream("GET", "/api/v1/alerts/stream"))
            lines.append(feed.iter_lines())
            assert next(lines[-1]) == ": connected"  # it holds its slot
        page = pages(key)
        page.goto("/")
        body = page.locator("body")
        expect(body).to_have_attribute("data-alert-stream-state", "closed")
        problem = page.locator("#feed-problem")
        expect(problem).to_contain_text("New alerts do not arrive on this page")
    # the other tabs closed: the next try opens the feed
    expect(body).to_have_attribute("data-alert-stream-state", "open", timeout=30_000)
    expect(problem).to_be_hidden()
