"""Benchmark: one process recording usage as fast as it can, against an embedded NATS
with nothing else running (the producer's own ceiling; ``bench/ingest.py`` measures it
while the workers share the machine).

Figures (one JSON line each), for two ways of calling, ``mode``: ``tight`` (one call after
another) and ``per_turn`` (the loop turns once between calls, as in an app whose calls
each await real I/O, so nothing else is handed over in the same turn):
- ``producer_alone_events_per_s``: ``record_usage`` calls per second, priced and
  published, until JetStream acknowledged every one;
- ``producer_cpu_us_per_event``: this process's CPU per call, publishing and acks included.

Run: ``./run python bench/producer.py [--events 100000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import nats
from ingest import emit, record

from budget.config import Settings
from budget.tracker import UsageTracker, start_usage_tracker
from projections.engine.log import declare_streams
from services.embedded import EmbeddedNats


async def calls(tracker: UsageTracker, events: int, *, per_turn: bool) -> tuple[float, float]:
    """Wall seconds and CPU seconds of ``events`` calls, until all are acknowledged."""
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(events):
        await record(tracker, i)
        if per_turn:
            await asyncio.sleep(0)
    await tracker.flush()
    return time.perf_counter() - started, time.process_time() - cpu


async def main(events: int, rounds: int) -> None:
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
        for round_ in range(rounds):
            for mode in ("tight", "per_turn"):
                wall, cpu = await calls(tracker, events, per_turn=mode == "per_turn")
                extra = {"events": events, "mode": mode, "round": round_}
                emit("producer_alone_events_per_s", events / wall, "events/s", **extra)
                emit("producer_cpu_us_per_event", cpu / events * 1e6, "us", **extra)
        await tracker.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per mode and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating the modes")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.rounds))
