"""Signing in and out, who may do what, and what pages never give away."""

from __future__ import annotations

import re

import httpx
from console_support import Pages, csrf, sign_in
from playwright.sync_api import expect

from events import ApiRole

from live import LiveStack

PAGES = (
    "/",
    "/policies",
    "/history",
    "/reports",
    "/alerts",
    "/alerts/rules",
    "/prices",
    "/system",
    "/keys",
)


def test_pages_send_a_visitor_without_a_session_to_sign_in(stack: LiveStack, pages: Pages) -> None:
    for path in PAGES:
        answer = httpx.get(stack.base_url + path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login"), path
    page = pages()
    page.goto("/history?user_id=alice")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fhistory%3Fuser_id%3Dalice$"))
    sign_in(page, stack.admin_key)
    page.goto("/login?next=%2Fhistory%3Fuser_id%3Dalice")  # signed in: straight on
    expect(page).to_have_url(re.compile(r"/history\?user_id=alice$"))


def test_sign_in_lands_where_the_visitor_was_going(stack: LiveStack, pages: Pages) -> None:
    page = pages()
    page.goto("/reports")
    page.get_by_label("API key").fill(stack.admin_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/reports$"))
    expect(page.get_by_role("heading", name="Reports", exact=True)).to_be_visible()


def test_a_session_ended_under_a_refreshing_page_signs_in_back_to_that_page(
    stack: LiveStack, pages: Pages
) -> None:
    """The dashboard's poll finds the session gone (signed out in another tab): the
    sign-in that follows returns to the dashboard, not to the poll's bare fragment."""
    page = pages(stack.admin_key)
    page.goto("/?from=bookmark")
    other_tab = page.context.new_page()
    other_tab.goto("/policies")
    other_tab.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login\?next=%2F%3Ffrom%3Dbookmark$"), timeout=15_000)
    page.get_by_label("API key").fill(stack.admin_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/\?from=bookmark$"))
    expect(page.get_by_role("heading", name="Dashboard", exact=True)).to_be_visible()


def test_a_wrong_key_is_refused_with_a_reason(pages: Pages) -> None:
    page = pages()
    page.goto("/login")
    page.get_by_label("API key").fill("not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#e-key")).to_contain_text("No live key matches")
    expect(page).to_have_url(re.compile(r"/login$"))
    assert page.get_by_label("API key").input_value() == ""  # a key is never echoed back


def test_an_ingest_key_cannot_sign_in_and_is_told_why(stack: LiveStack, pages: Pages) -> None:
    page = pages()
    page.goto("/login")
    page.get_by_label("API key").fill(stack.new_key(ApiRole.INGEST))
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#e-key")).to_contain_text("This is an ingest key")
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login$"))


def test_sign_out_ends_the_session(stack: LiveStack, pages: Pages) -> None:
    page = pages(stack.admin_key)
    [cookie] = [c for c in page.context.cookies() if c["name"] == "budget_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.request.get("/api/v1/policies").status == 200  # the cookie authenticates
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login$"))
    assert page.request.get("/api/v1/policies").status == 401
    assert page.request.get("/api/v1/alerts/stream").status == 401
    # The session ended on the server: a copy of the old cookie opens nothing either.
    copied = {"Cookie": f"budget_session={cookie['value']}"}
    assert httpx.get(f"{stack.base_url}/api/v1/policies", headers=copied).status_code == 401


def test_a_viewer_reads_everything_and_writes_nothing(stack: LiveStack, pages: Pages) -> None:
    page = pages(stack.new_key(ApiRole.VIEWER, name="analyst"))
    for path in PAGES:
        page.goto(path)
        expect(page.locator("main")).to_be_visible()
        assert page.locator("main form[method=post]").count() == 0, path
        assert (
            page.get_by_role("link", name=re.compile("^(New policy|Edit|Delete|Remove)$")).count()
            == 0
        )
    refused = page.goto("/policies/new")
    assert refused is not None and refused.status == 403
    expect(page.locator("main")).to_contain_text("needs the role admin")
    token = csrf(page)
    form: dict[str, str | float | bool] = {
        "csrf_token": token,
        "name": "Sneaky",
        "limit_amount": "1",
    }
    assert page.request.post("/policies/new", form=form).status == 403
    assert page.request.post("/alerts/rules", form={**form, "alert_type": "anomaly"}).status == 403
    # Nor may a viewer make itself an admin key, or revoke one.
    assert page.request.post("/keys", form={**form, "role": "admin"}).status == 403
    with stack.client() as http:
        keys = http.get("/api/v1/keys").json()
    assert all(k["name"] != "Sneaky" for k in keys)
    admin_id = next(k["key_id"] for k in keys if k["role"] == "admin")
    assert page.request.post(f"/keys/{admin_id}/revoke", form={"csrf_token": token}).status == 403


def test_a_change_without_the_csrf_token_is_refused(stack: LiveStack, pages: Pages) -> None:
    page = pages(stack.admin_key)
    answer = page.request.post("/policies/new", form={"name": "Forged", "limit_amount": "1"})
    assert answer.status == 403
    assert "CSRF" in answer.text()
    with stack.client() as http:
        assert all(p["name"] != "Forged" for p in http.get("/api/v1/policies").json())


def test_pages_are_never_cached_and_never_carry_the_key(stack: LiveStack, pages: Pages) -> None:
    page = pages(stack.admin_key)
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    for path in (*PAGES, "/policies/new", "/dashboard/live", "/dashboard/alerts"):
        answer = page.goto(path)
        assert answer is not None and answer.ok, path
        assert answer.headers["cache-control"] == "no-store", path
        assert "script-src 'self'" in answer.headers["content-security-policy"], path
        assert stack.admin_key not in page.content(), path
    assert seen and not [url for url in seen if stack.admin_key in url]
