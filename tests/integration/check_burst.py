"""One host-app process of the concurrency test: ``N`` checks at once, then usage.

Run as ``python check_burst.py PREFIX NATS_URL DATABASE_URL SPOOL_DIR N``. Prints
``ready``, waits for a message on ``<PREFIX>.test.go`` so all processes start together,
fires N concurrent ``check_budget`` calls of $0.10, records $0.10 of usage for each one
admitted (settling its reservation), and prints a JSON summary.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

from budget.config import Settings
from budget.pricing import PriceOverride
from budget.tracker import start_usage_tracker

MODEL = "burst-test-model"
# $10 per million output tokens: 10,000 tokens cost exactly the $0.10 estimate.
RATE = PriceOverride(
    provider="openai",
    model=MODEL,
    rates={"output_text": Decimal(10)},
    effective_from=date(2020, 1, 1),
)


async def main(prefix: str, nats_url: str, database_url: str, spool: str, count: int) -> None:
    settings = Settings(
        nats_url=nats_url,
        database_url=database_url,
        subject_prefix=prefix,
        spool_dir=Path(spool),
        default_limit=None,
        price_overrides=(RATE,),
        enforcer_timeout=30,
    )
    tracker = await start_usage_tracker(settings)
    assert tracker.publisher.client is not None
    go = await tracker.publisher.client.subscribe(f"{prefix}.test.go")
    await tracker.publisher.client.flush()
    print("ready", flush=True)
    await go.next_msg(timeout=60)

    results = await asyncio.gather(
        *(
            tracker.check_budget(MODEL, 10_000, user_id="burst", provider="openai")
            for _ in range(count)
        )
    )
    admitted = [r.reservation_id for r in results if r.allowed]
    for reservation_id in admitted:
        await tracker.record_usage(
            model=MODEL,
            provider="openai",
            output_tokens=10_000,
            user_id="burst",
            reservation_id=reservation_id,
        )
    await tracker.close()
    reasons = sorted({r.reason.split(":")[0] for r in results if not r.allowed})
    print(json.dumps({"admitted": admitted, "refused": count - len(admitted), "why": reasons}))


if __name__ == "__main__":
    prefix, nats_url, database_url, spool, count = sys.argv[1:]
    asyncio.run(main(prefix, nats_url, database_url, spool, int(count)))
