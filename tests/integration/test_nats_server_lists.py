"""``nats_url`` may list several servers, comma-separated (a NATS cluster): every client
connects with the list, the tracker and the CLI (nats-py) as the workers (FastStream).
Given the whole string, nats-py read it as one malformed URL and never connected."""

from __future__ import annotations

import signal
from pathlib import Path

from nats.aio.client import Client

from budget.publisher import EventPublisher
from budget.tracker import start_usage_tracker
from events import Topology
from services.ops import prepare

from enforcement import stack_settings
from support import budget_process, rows, wait_for

UNREACHABLE = "nats://127.0.0.1:1"


def listed(nats_url: str) -> str:
    """A list of an unreachable server and ``nats_url``: only the list's second answers."""
    return f"{UNREACHABLE}, {nats_url}"


async def test_a_tracker_connects_through_a_list_of_servers(
    nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(listed(nats_url), db, topology, tmp_path)
    await prepare(nats_url, db, settings)
    tracker = await start_usage_tracker(settings)
    try:
        await tracker.record_usage(model="gpt-4o", provider="openai", input_tokens=10)
        await tracker.flush(within=10)
        publisher = tracker.publisher
        assert isinstance(publisher, EventPublisher) and publisher.connected
        assert len(publisher.spool) == 0  # stored in JetStream, not waiting in the spool
    finally:
        await tracker.close()


async def test_a_worker_reads_the_log_through_a_list_of_servers(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    settings = stack_settings(nats_url, db, topology, tmp_path)
    await prepare(nats_url, db, settings)
    worker = budget_process(
        ["worker", "history"], nats_url=listed(nats_url), database_url=db, topology=topology
    )
    tracker = await start_usage_tracker(settings)
    try:
        await tracker.record_usage(model="gpt-4o", provider="openai", input_tokens=10)
        await tracker.flush(within=10)

        async def applied() -> bool:
            """the worker wrote the call into the usage history"""
            return bool(await rows(db, "SELECT 1 FROM usage_history"))

        await wait_for(applied, within=60)
    finally:
        await tracker.close()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
