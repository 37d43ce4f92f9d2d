"""The policy editor: errors next to the wrong field with the typed values kept; create,
edit and delete (after a confirmation), each visible to the API at once."""

from __future__ import annotations

import re

from console_support import Pages, unique
from playwright.sync_api import Page, expect

from live import LiveStack


def new_policy(page: Page, name: str, **fields: str) -> None:
    """Fill the new-policy form (labels as shown) and submit it."""
    page.goto("/policies/new")
    page.get_by_label("Name").fill(name)
    for label, value in fields.items():
        control = page.get_by_label(label, exact=True)
        if control.evaluate("el => el.tagName") == "SELECT":
            control.select_option(value)
        else:
            control.fill(value)
    page.get_by_role("button", name="Create policy").click()


def test_a_wrong_value_is_shown_next_to_its_field_and_the_form_keeps_what_was_typed(
    stack: LiveStack, pages: Pages
) -> None:
    page = pages(stack.admin_key)
    user = unique("user")
    new_policy(page, "Team cap", Scope="user", Key=user, **{"Limit (USD)": "-5"})
    expect(page.locator("#e-limit_amount")).to_have_text(
        "Input should be greater than or equal to 0"
    )
    expect(page.locator(".field.invalid")).to_have_count(1)
    expect(page.get_by_label("Name")).to_have_value("Team cap")
    expect(page.get_by_label("Key", exact=True)).to_have_value(user)
    expect(page.get_by_label("Scope")).to_have_value("user")
    expect(page.get_by_label("Limit (USD)")).to_have_value("-5")

    page.get_by_label("Limit (USD)").fill("$1,250")
    page.get_by_label("Id", exact=True).fill("team cap")
    page.get_by_role("button", name="Create policy").click()
    expect(page.locator("#e-limit_amount")).to_have_text(
        "Input should be a number such as 12.50: digits and a decimal point,"
        " without a currency sign or thousands separators"
    )
    expect(page.locator("#e-policy_id")).to_have_text(
        "Input should be letters, digits and _ . : - only (no spaces or other signs)"
    )

    page.get_by_label("Limit (USD)").fill("12.50")
    page.get_by_label("Id", exact=True).fill("")
    page.get_by_role("button", name="Create policy").click()
    expect(page).to_have_url(re.compile(r"/policies$"))
    row = page.locator("tr", has_text="Team cap").filter(has_text=user)
    expect(row).to_contain_text("$12.50")
    with stack.client() as http:
        [created] = [p for p in http.get("/api/v1/policies").json() if p["scope_key"] == user]
    assert (created["scope"], created["limit_amount"]) == ("user", "12.50")


def test_a_check_of_the_whole_policy_is_shown_at_the_field_it_names(
    stack: LiveStack, pages: Pages
) -> None:
    page = pages(stack.admin_key)
    new_policy(page, "Global with a key", Key="alice", **{"Limit (USD)": "10"})
    expect(page.locator("#e-scope_key")).to_have_text("a global policy has no scope_key")
    new_policy(page, "Custom without dates", Period="custom", **{"Limit (USD)": "10"})
    expect(page.locator("#e-custom_start")).to_contain_text("needs custom_start and custom_end")
    expect(page.get_by_label("Custom start")).to_be_visible()  # an error keeps it in sight


def test_custom_bounds_are_read_in_the_policys_time_zone(stack: LiveStack, pages: Pages) -> None:
    page = pages(stack.admin_key)
    policy_id = unique("launch")
    new_policy(
        page,
        "Launch week",
        Id=policy_id,
        Period="custom",
        **{
            "Time zone": "Asia/Tokyo",
            "Custom start": "2026-03-02T09:00",
            "Custom end": "2026-03-09T09:00",
            "Limit (USD)": "300",
        },
    )
    expect(page).to_have_url(re.compile(r"/policies$"))
    with stack.client() as http:
        policy = http.get(f"/api/v1/policies/{policy_id}").json()
    assert (policy["custom_start"], policy["custom_end"]) == (
        "2026-03-02T00:00:00Z",
        "2026-03-09T00:00:00Z",
    )
    page.goto(f"/policies/{policy_id}/edit")  # shown back in the policy's zone
    expect(page.get_by_label("Custom start")).to_have_value("2026-03-02T09:00")


def test_a_policy_is_edited_then_deleted_after_a_confirmation(
    stack: LiveStack, pages: Pages
) -> None:
    page = pages(stack.admin_key)
    policy_id = unique("cap")
    new_policy(
        page, "Project cap", Id=policy_id, Scope="project", Key="search", **{"Limit (USD)": "40"}
    )
    expect(page).to_have_url(re.compile(r"/policies$"))

    # Each row's links name its policy (a screen reader lists links without their rows).
    page.locator(f"#p-{policy_id}").get_by_role("link", name="Edit Project cap").click()
    expect(page.get_by_label("Limit (USD)")).to_have_value("40")
    page.get_by_label("Limit (USD)").fill("55")
    page.get_by_label("Action at the limit").select_option("block")
    page.get_by_role("button", name="Save policy").click()
    expect(page.locator(".flash")).to_have_text("Policy “Project cap” saved.")
    expect(page.locator(f"#p-{policy_id}")).to_contain_text("$55.00")
    expect(page.locator(f"#p-{policy_id}")).to_contain_text("block")

    page.locator(f"#p-{policy_id}").get_by_role("link", name="Delete Project cap").click()
    expect(page.get_by_text("Delete the policy “Project cap”?")).to_be_visible()
    page.get_by_role("link", name="Cancel").click()
    expect(page.locator(f"#p-{policy_id}")).to_be_visible()  # cancelling kept it
    page.locator(f"#p-{policy_id}").get_by_role("link", name="Delete Project cap").click()
    page.get_by_role("button", name="Delete policy").click()
    expect(page.locator(".flash")).to_have_text("Policy “Project cap” deleted.")
    expect(page.locator(f"#p-{policy_id}")).to_have_count(0)
    with stack.client() as http:
        assert http.get(f"/api/v1/policies/{policy_id}").status_code == 404
