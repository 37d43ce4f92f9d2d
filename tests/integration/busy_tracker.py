"""A host-app process that keeps its event loop busy with checks, as a hot service does.

Run as ``python busy_tracker.py PREFIX NATS_URL DATABASE_URL SPOOL_DIR GO_FILE``. Checks
once (caching the policy snapshot), prints ``ready``, then checks in a loop that never
waits on anything but the checks themselves until ``GO_FILE`` exists; then checks once
more and prints that check's result as JSON. A tracker that only learns of policy changes
from messages its loop has to pick up learns nothing in that loop.
"""

from __future__ import annotations

import asyncio
import sys
from decimal import Decimal
from pathlib import Path

from budget.config import Settings
from budget.tracker import start_usage_tracker

ESTIMATE = Decimal("0.10")


async def main(prefix: str, nats_url: str, database_url: str, spool: str, go: str) -> None:
    settings = Settings(
        nats_url=nats_url,
        database_url=database_url,
        subject_prefix=prefix,
        spool_dir=Path(spool),
        default_limit=None,
    )
    tracker = await start_usage_tracker(settings)
    first = await tracker.check_budget("gpt-4o", user_id="busy", estimated_cost=ESTIMATE)
    assert first.allowed and not first.enforced, first
    print("ready", flush=True)
    go_file = Path(go)
    while not go_file.exists():  # noqa: ASYNC240 - blocking on purpose: the loop never waits
        await tracker.check_budget("gpt-4o", user_id="busy", estimated_cost=ESTIMATE)
    result = await tracker.check_budget("gpt-4o", user_id="busy", estimated_cost=ESTIMATE)
    print(result.model_dump_json(), flush=True)
    if result.reservation_id is not None:
        await tracker.release_reservation(result.reservation_id)
    await tracker.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
