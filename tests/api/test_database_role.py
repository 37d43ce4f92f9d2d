"""The HTTP API connects to PostgreSQL as a role of its own (``budget_api``,
services.database_roles), as ``budget up`` and Compose run it, and serves on it: keys are
checked, pages and endpoints read, console sessions start and end. What that role may not
do (drop, mint a key, write a projection): tests/integration/test_database_roles.py."""

from __future__ import annotations

import httpx
import psycopg
import pytest

from events import ApiRole
from services.api.key_cache import APPLICATION_NAME
from services.database_roles import API_ROLE

from http_support import csrf_token, eventually, sign_in
from live import LiveStack


@pytest.fixture(scope="module", autouse=True)
def _roles(door_database_urls: dict[str, str]) -> None:
    if API_ROLE not in door_database_urls:
        pytest.fail(
            f"the test database has no role {API_ROLE} and its URL may not make one",
            pytrace=False,
        )


def _api_roles(stack: LiveStack) -> set[str]:
    """Who the API's key cache (its connection that listens for key changes) is."""
    with psycopg.connect(stack.settings.database_url) as conn:
        rows = conn.execute(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE application_name = %s",
            (APPLICATION_NAME,),
        ).fetchall()
    return {str(row[0]) for row in rows}


def test_the_api_serves_as_its_own_role(stack: LiveStack) -> None:
    assert eventually(lambda: _api_roles(stack), what="the API's key cache") == {API_ROLE}
    viewer = stack.new_key(ApiRole.VIEWER)  # an event the workers apply, as the owner
    with stack.client() as admin:
        keys = admin.get("/api/v1/keys")
        assert keys.status_code == 200, keys.text
        assert {"admin", "viewer"} <= {key["role"] for key in keys.json()}
        for read in ("policies", "rules", "spend", "alerts", "usage", "projections"):
            assert admin.get(f"/api/v1/{read}").status_code == 200, read
    with httpx.Client(base_url=stack.base_url, timeout=30) as browser:
        sign_in(browser, viewer)  # a session row inserted, old ones swept
        for path in ("/", "/history", "/reports", "/alerts", "/policies"):
            page = browser.get(path)
            assert page.status_code == 200, (path, page.text)
        token = csrf_token(browser.get("/policies").text)
        cookie = browser.cookies["budget_session"]
        signed_out = browser.post("/logout", data={"csrf_token": token})
        assert signed_out.status_code == 303, signed_out.text  # the session row ended
    with httpx.Client(base_url=stack.base_url, timeout=30) as copied:
        copied.cookies.set("budget_session", cookie)
        assert copied.get("/").status_code == 303  # back to the sign-in page
    with psycopg.connect(stack.settings.database_url) as conn:
        ended = conn.execute(
            "SELECT count(*) FILTER (WHERE ended_at IS NOT NULL) FROM console_sessions"
        ).fetchone()
    assert ended is not None and ended[0] >= 1
