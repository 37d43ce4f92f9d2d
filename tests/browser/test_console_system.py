"""The system page pages through every dead letter, not only the newest page of them."""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor

import nats
from console_support import Pages
from playwright.sync_api import expect

from services.api.console.system import DEAD_LETTERS

from live import LiveStack

USAGE_READERS = 4
"""Each unreadable usage event is dead-lettered by each projection reading usage."""
ROWS = "section:has(h2:text-is('Dead letters')) tbody tr:not(.empty)"


def test_older_dead_letters_are_a_page_away(stack: LiveStack, pages: Pages) -> None:
    garbage = DEAD_LETTERS // USAGE_READERS + 1
    expected = garbage * USAGE_READERS

    async def publish_garbage() -> None:
        nc = await nats.connect(stack.settings.nats_url)
        subject = stack.settings.topology.event_subject("usage.recorded")
        for n in range(garbage):
            await nc.jetstream().publish(subject, f"{{not json {n}".encode())
        await nc.close()

    # Playwright's sync API holds this thread's event loop: NATS gets a thread of its own.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, publish_garbage()).result()
    deadline = time.monotonic() + 30
    with stack.client() as http:
        while len(http.get("/api/v1/dead-letters", params={"limit": 500}).json()) < expected:
            assert time.monotonic() < deadline, "the garbage was not dead-lettered"
            time.sleep(0.1)
    page = pages(stack.admin_key)
    page.goto("/system")
    expect(page.locator(ROWS)).to_have_count(DEAD_LETTERS)
    page.get_by_role("link", name="Older").click()
    expect(page).to_have_url(re.compile(r"/system\?before=\d+#dead-letters$"))
    expect(page.locator(ROWS)).to_have_count(expected - DEAD_LETTERS)
    expect(page.get_by_role("link", name="Older")).to_have_count(0)
    page.get_by_role("link", name="Newest").click()
    expect(page.locator(ROWS)).to_have_count(DEAD_LETTERS)
