"""Browser tests: the web console in Debian's headless Chromium, driven by Playwright's
sync API, against the module's ``stack`` (tests/live.py: every worker and service as
processes on real NATS and PostgreSQL).

The tests are plain sync functions: Playwright's sync API runs its own event loop and
cannot run inside pytest-asyncio's.

- ``browser``: Chromium, once per module (fails, never skips, when it is not installed)
- ``pages``: ``pages(key=None)`` opens a fresh browser context and page, signed in with
  ``key`` when given; closed after the test
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from console_support import Pages, sign_in
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from live import CHROMIUM, CHROMIUM_ARGS, LiveStack


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"the browser tests need Debian's Chromium at {CHROMIUM}: apt-get install chromium",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def pages(browser: Browser, stack: LiveStack) -> Iterator[Pages]:
    contexts: list[BrowserContext] = []

    def open_page(key: str | None = None, **options: object) -> Page:
        context = browser.new_context(base_url=stack.base_url, **options)  # type: ignore[arg-type]
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        if key is not None:
            sign_in(page, key)
        return page

    try:
        yield open_page
    finally:
        for context in contexts:
            context.close()
