"""The worker process as compose runs it."""

from __future__ import annotations

import signal
from pathlib import Path

from nats.aio.client import Client

from events import Topology

from support import budget_process, wait_for


async def test_worker_touches_its_heartbeat_file_while_running(
    nc: Client, db: str, topology: Topology, nats_url: str, tmp_path: Path
) -> None:
    heartbeat = tmp_path / "heartbeat"
    worker = budget_process(
        ["worker", "history"],
        nats_url=nats_url,
        database_url=db,
        topology=topology,
        BUDGET_HEARTBEAT_FILE=str(heartbeat),
    )
    try:

        async def beating() -> bool:
            """the worker created its heartbeat file"""
            return heartbeat.exists()

        await wait_for(beating, within=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
