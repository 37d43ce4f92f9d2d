"""The prices page: the seed's PricingRegistry in the console. A viewer finds the price a
model's calls are recorded at, a provider's models, and what a call costs; a model or
provider without a price is an error beside its field."""

from __future__ import annotations

from console_support import Pages
from playwright.sync_api import expect

from events import ApiRole

from live import LiveStack


def test_a_viewer_finds_a_models_price_and_a_calls_cost(stack: LiveStack, pages: Pages) -> None:
    page = pages(stack.new_key(ApiRole.VIEWER))
    page.goto("/")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Prices").click()
    expect(page.get_by_role("heading", name="Prices", level=1)).to_be_visible()
    page.locator("tr[data-provider='openai']").get_by_role("link", name="openai").click()
    page.get_by_role("link", name="gpt-4o", exact=True).click()
    price = page.locator("#price")
    expect(price.get_by_role("heading")).to_contain_text("gpt-4o")
    expect(price.locator("tr[data-usage-class='input_uncached'] td.num")).to_have_text("$2.5")
    expect(price.locator("tr[data-usage-class='output_text'] td.num")).to_have_text("$10")
    page.get_by_label("Input tokens", exact=True).fill("1000")
    page.get_by_label("Of them cached", exact=True).fill("200")
    page.get_by_label("Output tokens", exact=True).fill("500")
    page.get_by_role("button", name="Show price").click()
    # 800 x $2.50 + 200 x $1.25 + 500 x $10, a million tokens each
    expect(page.locator("#call-cost")).to_contain_text("costs $0.007250")


def test_a_model_or_provider_without_a_price_is_an_error_beside_its_field(
    stack: LiveStack, pages: Pages
) -> None:
    page = pages(stack.admin_key)
    page.goto("/prices")
    page.get_by_label("Model", exact=True).fill("no-such-model")
    page.get_by_label("Provider", exact=True).fill("opnai")
    page.get_by_label("Output tokens", exact=True).fill("lots")
    page.get_by_role("button", name="Show price").click()
    expect(page.get_by_label("Model", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#e-model")).to_contain_text("has no price")
    expect(page.locator("#e-provider")).to_contain_text(
        "did you mean 'openai'? (the providers are listed below)"
    )
    expect(page.locator("#e-output_tokens")).to_contain_text("a whole number of tokens")
    expect(page.locator("#price")).to_have_count(0)
