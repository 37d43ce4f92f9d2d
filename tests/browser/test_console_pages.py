"""Reports, alert rules and filters, the system page; every page served from the package
alone, without a script error or a CSP violation, and usable on a phone's width."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

from console_support import Pages, record, unique, wait_applied
from playwright.sync_api import Page, expect

from live import LiveStack

PAGES = (
    "/",
    "/policies",
    "/policies/new",
    "/history",
    "/reports",
    "/reports?kind=projection",
    "/alerts",
    "/alerts/rules",
    "/prices?provider=openai&model=gpt-4o&input_tokens=1000&output_tokens=500",
    "/system",
    "/keys",
)


def chart_count(page: Page) -> int:
    page.wait_for_load_state("load")
    count: int = page.evaluate("() => window.Chart ? Object.keys(Chart.instances).length : 0")
    return count


def test_every_page_comes_from_the_package_without_errors(stack: LiveStack, pages: Pages) -> None:
    page = pages(stack.admin_key)
    foreign: list[str] = []
    problems: list[str] = []
    page.on(
        "request", lambda r: None if r.url.startswith(stack.base_url) else foreign.append(r.url)
    )
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    for path in PAGES:
        answer = page.goto(path)
        assert answer is not None and answer.ok, path
        page.wait_for_load_state("load")
        expect(page.locator("body")).to_have_attribute("data-alert-stream-state", "open")
    assert foreign == []
    assert problems == []  # a CSP violation is reported as a console error


def test_reports_show_tables_a_chart_and_exports(stack: LiveStack, pages: Pages) -> None:
    user = unique("user")
    now = datetime.now(UTC)
    with stack.client() as http:
        seqs = [
            record(http, user, occurred_at=(now - timedelta(days=d)).isoformat())
            for d in range(1, 4)
        ]
        wait_applied(http, max(seqs))
    page = pages(stack.admin_key)
    page.goto("/reports")
    page.get_by_label("Report").select_option("custom")
    page.get_by_label("From", exact=True).fill((now - timedelta(days=7)).date().isoformat())
    page.get_by_label("Through", exact=True).fill(now.date().isoformat())
    page.get_by_label("Group by").select_option("user")
    page.get_by_role("button", name="Show report").click()
    expect(page.get_by_role("heading", name="Usage report by user")).to_be_visible()
    row = page.locator("tr", has_text=user)
    expect(row).to_contain_text("$0.02")  # 3 calls at $0.0075
    assert chart_count(page) == 1
    links = {
        label: page.get_by_role("link", name=label, exact=True).get_attribute("href") or ""
        for label in ("CSV", "JSON", "Markdown")
    }
    assert all(href.startswith("/api/v1/reports/custom?") for href in links.values())
    assert "group_by=user" in links["CSV"]
    csv_export = page.request.get(links["CSV"])
    assert csv_export.ok and user in csv_export.text()
    assert page.request.get(links["JSON"]).json()["title"] == "Usage report by user"
    assert page.request.get(links["Markdown"]).text().startswith("# Usage report by user")

    for kind, heading in (
        ("summary", "Monthly summary"),
        ("trend", "Spend trend, last 30 days"),
        ("comparison", "Period comparison"),
        ("projection", "Spend projection"),
    ):
        page.goto(f"/reports?kind={kind}")
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
    page.goto("/reports?kind=custom&start=2026-05-01&end=2026-04-01")
    expect(page.locator("#e-end")).to_contain_text("end must be after its start")  # by it
    # one end of the compared window only: said by the missing one, in the form's words
    page.goto("/reports?kind=comparison&start=2026-05-01&end=2026-05-31&previous_start=2026-04-01")
    expect(page.locator("#e-previous_end")).to_have_text(
        "give the last day to compare too, or leave both blank for the same length just before"
    )


def test_no_grouping_chosen_is_one_total_on_the_page_and_in_its_exports(
    stack: LiveStack, pages: Pages
) -> None:
    """ "No grouping (one total)" was taken for a field left blank: the report came
    grouped by model, the menu said Model again, and the exports were by model too."""
    page = pages(stack.admin_key)
    page.goto("/reports?kind=custom")
    page.get_by_label("Group by").select_option("")
    page.get_by_role("button", name="Show report").click()
    expect(page.get_by_role("heading", name="Usage report by total")).to_be_visible()
    expect(page.get_by_label("Group by")).to_have_value("")
    csv_link = page.get_by_role("link", name="CSV", exact=True).get_attribute("href") or ""
    assert "group_by" not in csv_link
    assert page.request.get(csv_link.replace("format=csv", "format=json")).json()["title"] == (
        "Usage report by total"
    )


def test_a_report_by_tag_from_a_link_shows_its_tag_as_the_grouping(
    stack: LiveStack, pages: Pages
) -> None:
    """The console lists the dimensions; a report by tag asked for in a link (an export's,
    or one shared) shows its rows, and its tag as the form's grouping, not "No grouping"."""
    team = unique("team")
    now = datetime.now(UTC)
    with stack.client() as http:
        seq = record(http, unique("user"), tags={"team": team}, occurred_at=now.isoformat())
        wait_applied(http, seq)
    page = pages(stack.admin_key)
    day = now.date().isoformat()
    page.goto(f"/reports?kind=custom&start={day}&end={day}&group_by=tag:team")
    expect(page.get_by_role("heading", name="Usage report by tag:team")).to_be_visible()
    expect(page.locator("tr", has_text=team)).to_contain_text("$0.01")  # $0.0075
    expect(page.get_by_label("Group by")).to_have_value("tag:team")
    csv_link = page.get_by_role("link", name="CSV", exact=True).get_attribute("href") or ""
    assert "group_by=tag%3Ateam" in csv_link and team in page.request.get(csv_link).text()


def test_a_reports_notes_are_said_to_travel_beside_its_csv(stack: LiveStack, pages: Pages) -> None:
    """The CSV download cannot hold the notes: the page says where they are instead, and
    the download carries them in its Report-Notes header."""
    page = pages(stack.admin_key)
    page.goto("/reports?kind=custom")
    expect(page.get_by_role("heading", name=re.compile("^Usage report by"))).to_be_visible()
    expect(page.locator("#csv-note")).to_have_count(0)  # a report without notes
    page.goto("/reports?kind=comparison")
    notes = page.get_by_role("list", name="Notes").get_by_role("listitem")
    expect(notes.first).to_contain_text("previous window")
    notice = page.locator("#csv-note")
    expect(notice).to_contain_text("Report-Notes")
    notice.get_by_role("link", name="notes").click()
    expect(page).to_have_url(re.compile("#report-notes$"))
    csv_link = page.get_by_role("link", name="CSV", exact=True).get_attribute("href") or ""
    download = page.request.get(csv_link)
    shown = ", ".join(f'"{note}"' for note in notes.all_inner_texts())
    assert download.ok and download.headers["report-notes"] == shown


def test_alert_rules_are_added_with_field_errors_and_removed(
    stack: LiveStack, pages: Pages
) -> None:
    page = pages(stack.admin_key)
    rule_id = unique("rule")
    page.goto("/alerts/rules")
    page.get_by_label("Name", exact=True).fill("Half way")
    page.get_by_label("Id", exact=True).fill(rule_id)
    page.get_by_label("Threshold (% of the limit)").fill("-50")
    page.get_by_role("button", name="Add rule").click()
    expect(page.locator("#e-threshold_percent")).to_have_text("Input should be greater than 0")
    expect(page.get_by_label("Name")).to_have_value("Half way")
    # an anomaly rule watches totals: policies given it would do nothing
    page.get_by_label("Type", exact=True).select_option("anomaly")
    page.get_by_label("Threshold (% of the limit)").fill("")
    page.get_by_label("Policies", exact=True).fill("team")
    page.get_by_role("button", name="Add rule").click()
    expect(page.locator("#e-policy_ids")).to_contain_text("anomaly rules watch no policy")
    page.get_by_label("Type", exact=True).select_option("threshold_warning")
    # a typo in a policy id would make a rule that never fires
    page.get_by_label("Policies", exact=True).fill("no-such-policy")
    page.get_by_label("Threshold (% of the limit)").fill("50")
    page.get_by_role("button", name="Add rule").click()
    expect(page.locator("#e-policy_ids")).to_contain_text("no policy has the id 'no-such-policy'")
    expect(page.get_by_label("Policies", exact=True)).to_have_value("no-such-policy")
    page.get_by_label("Policies", exact=True).fill("")
    page.get_by_label("Threshold (% of the limit)").fill("50")
    page.get_by_label("webhook").check()
    page.get_by_role("button", name="Add rule").click()
    expect(page.locator(".flash")).to_have_text("Rule “Half way” added.")
    rule = page.locator(f'tr[data-rule-id="{rule_id}"]')
    expect(rule).to_contain_text("50.0%")
    expect(rule).to_contain_text("webhook")

    rule.get_by_role("link", name="Remove Half way").click()
    page.get_by_role("button", name="Remove rule").click()
    expect(page.locator(f'tr[data-rule-id="{rule_id}"]')).to_have_count(0)
    with stack.client() as http:
        assert all(r["rule_id"] != rule_id for r in http.get("/api/v1/rules").json())


def test_alerts_are_filtered_and_resolved(stack: LiveStack, pages: Pages) -> None:
    user = unique("user")
    with stack.client() as http:
        body = {"name": f"Tiny {user}", "scope": "user", "scope_key": user, "limit_amount": "0.001"}
        policy_id = unique("tiny")
        http.put(f"/api/v1/policies/{policy_id}", json=body).raise_for_status()
        page = pages(stack.admin_key)
        ours = page.locator("#alerts-table tr.alert-row", has_text=f"Tiny {user}")
        page.goto("/alerts?severity=critical")
        expect(page.locator("body")).to_have_attribute("data-alert-stream-state", "open")
        page.evaluate("window.loadedOnce = true")
        record(http, user)
        # The list re-reads itself, with its filters, as the feed delivers each alert.
        expect(ours).to_have_count(2, timeout=30_000)  # 95 % and 100 %, not the soft limit
        assert page.evaluate("window.loadedOnce") is True
        for badge in page.locator("#alerts-table .badge[class*=severity-]").all():
            expect(badge).to_have_text("critical")
        page.goto("/alerts?alert_type=threshold_warning&resolved=open")
        expect(ours).to_have_count(1)
        ours.get_by_role("button", name="Resolve").click()
        expect(page).to_have_url(re.compile(r"alert_type=threshold_warning&resolved=open$"))
        expect(ours).to_have_count(0)
        page.goto("/alerts?resolved=resolved")
        expect(ours).to_contain_text("resolved")
        alerts = http.get("/api/v1/alerts", params={"policy_id": policy_id}).json()["alerts"]
        assert [a["alert"]["alert_type"] for a in alerts if a["resolved_at"]] == [
            "threshold_warning"
        ]


def test_a_budgets_alerts_are_a_click_away_and_filtered_in_the_url(
    stack: LiveStack, pages: Pages
) -> None:
    user, policy_id = unique("user"), unique("tiny")
    name = f"Tiny {user}"
    with stack.client() as http:
        body = {"name": name, "scope": "user", "scope_key": user, "limit_amount": "0.001"}
        http.put(f"/api/v1/policies/{policy_id}", json=body).raise_for_status()
        record(http, user)  # 750 % of the limit: 80 %, 95 % and 100 % at once
        deadline = time.monotonic() + 30
        while len(http.get("/api/v1/alerts", params={"policy_id": policy_id}).json()["alerts"]) < 3:
            assert time.monotonic() < deadline, "the three alerts were not raised"
            time.sleep(0.1)
    page = pages(stack.admin_key)
    page.goto("/")
    budget = page.locator(".budget", has=page.get_by_role("link", name=name, exact=True))
    budget.get_by_role("link", name="its alerts").click()
    expect(page).to_have_url(re.compile(rf"/alerts\?policy_id={policy_id}$"))
    expect(page.get_by_label("Policy", exact=True)).to_have_value(policy_id)
    rows = page.locator("#alerts-table tr.alert-row")
    expect(rows).to_have_count(3)
    expect(rows.filter(has_text=name)).to_have_count(3)


def test_the_system_page_shows_projections_and_services(stack: LiveStack, pages: Pages) -> None:
    page = pages(stack.admin_key)
    page.goto("/system")
    for name in ("spend", "history", "policies", "alerts", "reports", "api_keys"):
        expect(page.locator(f'tr[data-projection="{name}"]')).to_contain_text("live")
    for service in ("nats", "postgresql", "enforcer", "query service"):
        expect(page.locator(f'.service[data-service="{service}"]')).to_have_attribute(
            "data-ok", "true"
        )
    expect(page.get_by_text("No dead letters")).to_be_visible()


def test_pages_fit_a_phones_width(stack: LiveStack, pages: Pages) -> None:
    page = pages(stack.admin_key, viewport={"width": 390, "height": 844}, is_mobile=True)
    for path in PAGES:
        page.goto(path)
        page.wait_for_load_state("load")
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width}px wide"  # wide tables scroll in their panel
    page.goto("/")
    expect(page.get_by_role("link", name="History", exact=True)).to_be_visible()
    expect(page.locator(".budget").first).to_be_visible()


def test_a_page_that_does_not_exist_is_a_console_page_with_the_way_back(
    stack: LiveStack, pages: Pages
) -> None:
    page = pages(stack.admin_key)
    answer = page.goto("/polices?scope=user")  # mistyped
    assert answer is not None and answer.status == 404
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    expect(page.get_by_text("There is no page at /polices")).to_be_visible()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    page.get_by_role("link", name="Back to the dashboard").click()
    expect(page.get_by_role("heading", name="Dashboard", exact=True)).to_be_visible()
    # The API's own paths keep answering problem JSON, to a browser too.
    api = page.request.get("/api/v1/polices", headers={"Accept": "text/html"})
    assert api.status == 404 and api.headers["content-type"] == "application/problem+json"
    signed_out = pages()
    missing = signed_out.goto("/polices")
    assert missing is not None and missing.status == 404
    expect(signed_out.get_by_role("link", name="Sign in")).to_be_visible()


def test_the_keyboard_skips_the_menu_to_the_page(stack: LiveStack, pages: Pages) -> None:
    page = pages(stack.admin_key)
    page.goto("/alerts")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")  # the page's first control, not the menu's next link
    in_main: bool = page.evaluate("() => document.activeElement.closest('main') !== null")
    assert in_main
