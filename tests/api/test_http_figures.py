"""Figures the dashboard and the reports compute from spend, over HTTP on the real
service: a percentage of any limit, however small."""

from __future__ import annotations

import re
from collections.abc import Iterator
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
