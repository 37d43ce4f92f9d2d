"""Screenshots of every console page, for docs/screenshots/.

Starts the whole product (``tests/live.py``'s stack on the NATS and PostgreSQL the tests
use: ``BUDGET_TEST_*`` URLs, Docker, or embedded ones), fills it with demo data through
the HTTP API (``scripts/demo_data.py``), signs in with Chromium and photographs each page
at a desktop width, and the dashboard on a phone's.

    .venv/bin/python scripts/screenshots.py              # writes docs/screenshots/*.png
    .venv/bin/python scripts/screenshots.py --serve      # then keeps the stack running

Needs Debian's Chromium (``apt-get install chromium``) at /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Page, ViewportSize, sync_playwright

from events import UsageRecorded
from services.ops import nats_client

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from demo_data import seed, tend_alerts, wait_applied, wait_feed_quiet  # noqa: E402

from live import CHROMIUM, CHROMIUM_ARGS, LiveStack, live_stack  # noqa: E402
from servers import (  # noqa: E402
    create_schema,
    provide_nats,
    provide_postgres,
    server_tmpdir,
    with_search_path,
)

DESKTOP = ViewportSize(width=1440, height=900)
PHONE = ViewportSize(width=390, height=844)
PAGES = {
    "dashboard": "/",
    "policies": "/policies",
    "history": "/history",
    "reports": "/reports?kind=custom&group_by=model",
    "alerts": "/alerts",
    "alert-rules": "/alerts/rules",
    "prices": "/prices?model=claude-sonnet-4&input_tokens=12000&output_tokens=800",
    "system": "/system",
    "keys": "/keys",
}


@contextlib.contextmanager
def running_stack() -> Iterator[LiveStack]:
    workdir = server_tmpdir("screenshots")
    nats = provide_nats(workdir)
    postgres = provide_postgres(workdir)
    try:
        create_schema(postgres.url, "screenshots")
        url = with_search_path(postgres.url, "screenshots")
        yield from live_stack(nats.url, url, workdir / "stack")
    finally:
        nats.close()
        postgres.close()
        shutil.rmtree(workdir, ignore_errors=True)


def publish_malformed(stack: LiveStack) -> None:
    """A message a host app got wrong, so the System page has a dead letter to show."""

    async def publish() -> None:
        async with nats_client(stack.settings.nats_url) as nc:
            subject = stack.settings.topology.event_subject(UsageRecorded.SUBJECT)
            await nc.jetstream().publish(subject, b'{"type": "UsageRecorded", "model": 42}')

    asyncio.run(publish())


def settle(page: Page) -> None:
    """Times formatted and charts drawn (both scripts are deferred)."""
    page.wait_for_load_state("load")
    page.wait_for_function("() => !window.Chart || Object.keys(Chart.instances).length > 0")


def photograph(stack: LiveStack, out: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport=DESKTOP, device_scale_factor=1, timezone_id="Europe/Berlin", locale="en-US"
        )
        page = context.new_page()
        page.goto(stack.base_url + "/login")
        page.screenshot(path=out / "sign-in.png")
        page.fill("#f-key", stack.admin_key)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(stack.base_url + "/")
        for name, path in PAGES.items():
            page.goto(stack.base_url + path)
            settle(page)
            page.screenshot(path=out / f"{name}.png", full_page=True)
        page.goto(stack.base_url + "/policies/new")
        page.fill("#f-name", "Support bot")
        page.select_option("#f-scope", "project")
        page.fill("#f-scope_key", "support-bot")
        page.fill("#f-limit_amount", "-25")
        page.get_by_role("button", name="Create policy").click()
        page.wait_for_selector(".field.invalid")
        page.screenshot(path=out / "policy-form.png", full_page=True)
        page.set_viewport_size(PHONE)
        page.goto(stack.base_url + "/")
        settle(page)
        page.screenshot(path=out / "dashboard-narrow.png", full_page=True)
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--serve", action="store_true", help="keep the stack up afterwards")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with running_stack() as stack, stack.client() as http:
        print(f"seeding {stack.base_url} ...", flush=True)
        print(f"{seed(http)} calls recorded", flush=True)
        publish_malformed(stack)
        wait_applied(http)
        tend_alerts(http)
        wait_feed_quiet(http)  # else the dashboard's shot has toasts of the last alerts
        photograph(stack, args.out)
        print(f"screenshots in {args.out}", flush=True)
        if args.serve:
            print(f"serving {stack.base_url}; the admin key is in {stack.data_dir / 'admin.key'}")
            serve_until_stopped()
    return 0


def serve_until_stopped() -> None:
    """Until Ctrl-C or SIGTERM; either way the stack's processes are stopped after."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
