"""The API keys page: an admin lists keys, creates one (shown once, and it works at once)
and revokes one (refused from then on); a viewer has no way there."""

from __future__ import annotations

import httpx
from console_support import Pages, unique
from playwright.sync_api import expect

from events import ApiRole

from live import LiveStack


def test_an_admin_creates_a_key_that_works_and_revokes_it(stack: LiveStack, pages: Pages) -> None:
    name = unique("billing")
    page = pages(stack.admin_key)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="API keys").click()
    expect(page.get_by_role("heading", name="API keys", level=1)).to_be_visible()
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Role").select_option("ingest")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", name=f"New ingest key “{name}”")).to_be_visible()
    key = page.get_by_label("Key", exact=True).input_value()
    row = page.locator("tr", has_text=name)
    expect(row).to_contain_text("live")
    with stack.client(key) as http:
        assert http.post("/api/v1/check", json={"model": "gpt-4o"}).status_code == 200
        assert http.get("/api/v1/policies").status_code == 403  # ingest may not read
    page.goto("/keys")  # a reload shows the key no more
    expect(page.get_by_label("Key", exact=True)).to_have_count(0)
    assert key not in page.content()
    row.get_by_role("link", name=f"Revoke {name}").click()
    page.get_by_role("button", name="Revoke key").click()
    expect(page.get_by_role("status")).to_contain_text(f"Key “{name}” revoked.")
    expect(page.locator("tr", has_text=name)).to_contain_text("revoked")
    answer = httpx.post(
        f"{stack.base_url}/api/v1/check",
        json={"model": "gpt-4o"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 401


def test_a_key_without_a_name_is_an_error_beside_the_field(stack: LiveStack, pages: Pages) -> None:
    page = pages(stack.admin_key)
    page.goto("/keys")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_label("Name", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#e-name")).to_be_visible()
    expect(page.get_by_label("Key", exact=True)).to_have_count(0)


def test_a_viewer_has_no_keys_page(stack: LiveStack, pages: Pages) -> None:
    page = pages(stack.new_key(ApiRole.VIEWER))
    expect(page.get_by_role("navigation", name="Main").get_by_role("link")).not_to_have_count(0)
    expect(page.get_by_role("link", name="API keys")).to_have_count(0)
    answer = page.goto("/keys")
    assert answer is not None and answer.status == 403
