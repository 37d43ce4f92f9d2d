"""Figures the dashboard and the reports compute from spend, over HTTP on the real
service: a percentage of any limit, however small; a model's spend across providers; a
group of unpriced calls as unpriced, never $0."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from http_support import call, eventually


def _records(table: dict[str, Any]) -> list[dict[str, object]]:
    return [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]


@pytest.fixture
def tiny_limit(admin: httpx.Client, user: str) -> Iterator[str]:
    """A policy of ``user``'s with a limit of 1E-30 USD (the contract allows 40 places)."""
    policy_id = f"tiny-{user}"
    body = {"name": "Tiny", "scope": "user", "scope_key": user, "limit_amount": "1E-30"}
    admin.put(f"/api/v1/policies/{policy_id}", json=body).raise_for_status()
    yield policy_id
    admin.delete(f"/api/v1/policies/{policy_id}")


def test_spend_against_a_tiny_limit_is_a_percentage_everywhere(
    ingest: httpx.Client, viewer: httpx.Client, browser: httpx.Client, user: str, tiny_limit: str
) -> None:
    """$0.0075 against 1E-30 USD is 7.5E+29 %: exact in the report, capped on the page."""
    ingest.post("/api/v1/usage", json=call(user)).raise_for_status()

    def budget() -> dict[str, object] | None:
        summary = viewer.get("/api/v1/reports/summary")
        assert summary.status_code == 200, summary.text
        mine = [r for r in _records(summary.json()["tables"][1]) if r["key"] == user]
        return mine[0] if mine and mine[0]["spent_usd"] != "0" else None

    assert eventually(budget)["used_percent"] == "750000000000000000000000000000.0"
    for fmt in ("csv", "md"):
        export = viewer.get("/api/v1/reports/summary", params={"format": fmt})
        assert export.status_code == 200 and user in export.text, export.text
    for path in ("/", "/dashboard/live", "/reports?kind=summary"):
        page = browser.get(path)
        assert page.status_code == 200, (path, page.text)
    live = browser.get("/dashboard/live").text
    bar = re.search(rf'data-policy="{tiny_limit}".*?</div>', live, re.S)
    assert bar and "&gt;10,000%" in bar[0], live


@pytest.fixture
def each_model(admin: httpx.Client) -> Iterator[str]:
    """A policy limiting each model separately (across the providers that serve it)."""
    policy_id = f"each-model-{uuid.uuid4().hex[:8]}"
    body = {"name": "Each model", "scope": "model", "limit_amount": "1000"}
    admin.put(f"/api/v1/policies/{policy_id}", json=body).raise_for_status()
    yield policy_id
    admin.delete(f"/api/v1/policies/{policy_id}")


def test_a_model_two_providers_serve_is_one_bar_and_one_top_model(
    ingest: httpx.Client, viewer: httpx.Client, browser: httpx.Client, user: str, each_model: str
) -> None:
    for provider in ("openai", "azure"):
        ingest.post("/api/v1/usage", json=call(user, provider=provider)).raise_for_status()

    def month_of_model() -> Decimal | None:
        rows = viewer.get("/api/v1/spend", params={"scope": "user", "key": user}).json()
        if not rows or rows[0]["requests"] < 2:
            return None
        [model] = viewer.get("/api/v1/spend", params={"scope": "model", "key": "gpt-4o"}).json()
        return Decimal(model["cost"])

    spent = eventually(month_of_model)

    def dashboard() -> tuple[list[Decimal], list[Decimal]] | None:
        live = browser.get("/dashboard/live").text
        pattern = rf'data-policy="{each_model}" data-key="gpt-4o" data-spent="([^"]*)"'
        bars = [Decimal(b) for b in re.findall(pattern, live)]
        models = re.search(r"<h3>Models</h3>(.*?)</ol>", live, re.S)
        assert models, live
        top = re.findall(r'title="gpt-4o">.*?title="([^"]*) USD"', models[1], re.S)
        shown = bars, [Decimal(t) for t in top]
        return shown if spent in shown[1] or len(top) > 1 else None  # the rollups caught up

    assert eventually(dashboard) == ([spent], [spent])


def test_the_comparison_page_shows_a_group_of_unpriced_calls_as_unpriced(
    ingest: httpx.Client, viewer: httpx.Client, browser: httpx.Client, user: str
) -> None:
    ingest.post("/api/v1/usage", json=call(user, model=f"no-price-{user}")).raise_for_status()
    today = datetime.now(UTC).date().isoformat()
    params = {"kind": "comparison", "start": today, "end": today, "group_by": "user", "tz": "UTC"}

    def row() -> str | None:
        page = browser.get("/reports", params=params)
        assert page.status_code == 200, page.text
        found = re.search(rf"<tr><td[^>]*>{user}</td>.*?</tr>", page.text, re.S)
        return found[0] if found else None

    cells = re.findall(r"<td[^>]*>(.*?)</td>", eventually(row), re.S)
    shown = [re.sub(r"<[^>]+>", "", cell).strip() for cell in cells]
    # current, previous (no call: $0), change, percent, unpriced calls now and then
    assert shown[1:] == ["unpriced", "$0.00", "—", "—", "1", "0"]


def test_a_budget_whose_calls_had_no_price_shows_them_never_as_0(
    admin: httpx.Client,
    ingest: httpx.Client,
    viewer: httpx.Client,
    browser: httpx.Client,
    user: str,
) -> None:
    """Unpriced calls add nothing to a budget's spend, and the enforcer keeps their holds:
    the bar says they were made instead of showing $0.00 spent, 0 % used."""
    policy_id = f"cap-{user}"
    body = {"name": "Cap", "scope": "user", "scope_key": user, "limit_amount": "5"}
    admin.put(f"/api/v1/policies/{policy_id}", json=body).raise_for_status()

    def bar_after(calls: int) -> str:
        def requests() -> bool:
            rows = viewer.get("/api/v1/spend", params={"scope": "user", "key": user}).json()
            return bool(rows) and rows[0]["requests"] == calls

        eventually(requests, what=f"{calls} calls counted")
        live = browser.get("/dashboard/live").text
        bar = re.search(rf'data-policy="{policy_id}".*?</div>', live, re.S)
        assert bar, live
        return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", bar[0])).strip()

    ingest.post("/api/v1/usage", json=call(user, model=f"no-price-{user}")).raise_for_status()
    shown = bar_after(1)
    assert "unpriced" in shown and "$0.00" not in shown and "0.0%" not in shown, shown
    ingest.post("/api/v1/usage", json=call(user)).raise_for_status()  # $0.0075
    shown = bar_after(2)
    assert "$0.01" in shown and "+1 unpriced" in shown and "0.2%" in shown, shown


def test_a_budget_whose_calls_had_no_price_is_unpriced_in_every_report_format(
    admin: httpx.Client, ingest: httpx.Client, viewer: httpx.Client, user: str
) -> None:
    policy_id = f"cap-{user}"
    body = {"name": f"Cap {user}", "scope": "user", "scope_key": user, "limit_amount": "5"}
    admin.put(f"/api/v1/policies/{policy_id}", json=body).raise_for_status()
    ingest.post("/api/v1/usage", json=call(user, model=f"no-price-{user}")).raise_for_status()

    def budget() -> dict[str, object] | None:
        report = viewer.get("/api/v1/reports/summary")
        assert report.status_code == 200, report.text
        mine = [r for r in _records(report.json()["tables"][1]) if r["policy"] == body["name"]]
        return mine[0] if mine and mine[0]["unpriced_requests"] else None

    summary = eventually(budget, what="the call counted")
    assert (summary["spent_usd"], summary["remaining_usd"], summary["used_percent"]) == (
        None,
        None,
        None,
    )
    csv = viewer.get("/api/v1/reports/summary", params={"format": "csv"}).text
    [line] = [row for row in csv.splitlines() if row.startswith(f"Cap {user},")]
    assert line.split(",")[5:] == ["", "5", "", "", "1"], line
    md = viewer.get("/api/v1/reports/summary", params={"format": "md"}).text
    [row] = [row for row in md.splitlines() if f"| Cap {user} |" in row]
    assert "| unpriced | 5.00 |" in row, row
