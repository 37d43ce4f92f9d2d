"""The console's forms over HTTP, on the real service: whatever a reader types into a
date field is answered with the page and an error next to that field, never a 500."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from http_support import sign_in
from live import LiveStack


@pytest.fixture(scope="module")
def browser(stack: LiveStack) -> Iterator[httpx.Client]:
    """A signed-in browser session (a cookie, no key header)."""
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        sign_in(client, stack.admin_key)
        yield client


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
