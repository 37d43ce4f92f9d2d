"""Benchmark: what NATS accounts cost a host's usage publish. The tracker records usage as
fast as it can on a secured embedded NATS (``budget up``'s config), as the ``service``
user (the stream's own account) and as the ``host`` user (through the hosts' account's
import, whose replies NATS remaps), in alternating rounds.

Figures (one JSON line each, per user and round): ``producer_events_per_s`` (calls
until JetStream acknowledged every one) and ``nats_cpu_us_per_event`` (the server's CPU).

Run: ``./run python bench/accounts.py [--events 20000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from ingest import emit, record

from budget.config import Settings
from budget.natsconn import connect_nats, nats_options
from budget.tracker import start_usage_tracker
from projections.engine.log import declare_streams
from services.embedded import EmbeddedNats
from services.nats_config import NatsCredentials, write_config


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="bench-accounts-"))
    try:
        await measure(data, args)
    finally:
        shutil.rmtree(data, ignore_errors=True)


async def measure(data: Path, args: argparse.Namespace) -> None:
    config = write_config(data, Settings())
    credentials = NatsCredentials(data)
    with EmbeddedNats(data / "nats", config_file=config).start() as server:
        assert server.pid is not None
        base = Settings(nats_url=server.url)
        service = credentials.settings_for("service", base)
        nc = await connect_nats(server.url, within=5, **nats_options(service))
        await declare_streams(nc.jetstream(), service.topology)
        await nc.close()
        for round_ in range(args.rounds):
            for user in ("service", "host"):
                spool = data / f"spool-{user}-{round_}"
                settings = credentials.settings_for(user, base).model_copy(
                    update={"spool_dir": spool}
                )
                tracker = await start_usage_tracker(settings)
                try:
                    for i in range(1000):  # warm: connections, caches
                        await record(tracker, i)
                    await tracker.flush()
                    cpu, started = cpu_seconds(server.pid), time.perf_counter()
                    for i in range(args.events):
                        await record(tracker, i)
                    await tracker.flush()
                    elapsed = time.perf_counter() - started
                    used = cpu_seconds(server.pid) - cpu
                finally:
                    await tracker.close()
                extra = {"user": user, "round": round_, "events": args.events}
                emit("producer_events_per_s", args.events / elapsed, "events/s", **extra)
                emit("nats_cpu_us_per_event", used / args.events * 1e6, "us/event", **extra)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="calls per user and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating the users")
    asyncio.run(main(parser.parse_args()))
