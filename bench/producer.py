"""Benchmark: one process recording usage as fast as it can, against an embedded NATS
with nothing else running (the producer's own ceiling; ``bench/ingest.py`` measures it
while the workers share the machine).

Figure (one JSON line): ``producer_alone_events_per_s``: ``record_usage`` calls per
second, priced and published, until JetStream acknowledged every one.

Run: ``./run python bench/producer.py [--events 100000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import nats
from ingest import record

from budget.config import Settings
from budget.tracker import start_usage_tracker
from projections.engine.log import declare_streams
from services.embedded import EmbeddedNats


async def main(events: int) -> None:
    data = Path(tempfile.mkdtemp(prefix="bench-producer-"))
    with EmbeddedNats(data / "nats").start() as server:
        settings = Settings(nats_url=server.url, spool_dir=data / "spool")
        nc = await nats.connect(server.url)
        await declare_streams(nc.jetstream(), settings.topology)
        await nc.close()
        tracker = await start_usage_tracker(settings)
        for i in range(2000):  # warm: connection, price cache
            await record(tracker, i)
        await tracker.flush()
        started = time.perf_counter()
        for i in range(events):
            await record(tracker, i)
        await tracker.flush()
        rate = events / (time.perf_counter() - started)
        await tracker.close()
    print(
        json.dumps(
            {
                "figure": "producer_alone_events_per_s",
                "value": round(rate, 3),
                "unit": "events/s",
                "events": events,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events to record")
    asyncio.run(main(parser.parse_args().events))
