"""The host app's optional exporter (``budget.metrics``), on a real tracker and NATS: the
spool depth rises while NATS is down and falls back once the spool is re-sent; a spool it
cannot read leaves the depth out, never the host app's whole scrape."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from budget.config import Settings
from budget.metrics import export_tracker_metrics
from budget.tracker import UsageTracker, start_usage_tracker
from events import Topology
from projections.engine.log import declare_streams
from services.embedded import EmbeddedNats

from support import wait_for

CALL = {"model": "gpt-4o", "provider": "openai", "input_tokens": 100, "output_tokens": 10}


@contextlib.asynccontextmanager
async def shop_tracker(
    embedded_nats: EmbeddedNats, topology: Topology, spool_dir: Path
) -> AsyncIterator[UsageTracker]:
    """A tracker named ``shop`` on the real NATS, spooling in ``spool_dir``."""
    client = await nats.connect(embedded_nats.url)
    await declare_streams(client.jetstream(), topology)
    await client.close()
    settings = Settings(
        nats_url=embedded_nats.url,
        subject_prefix=topology.prefix,
        spool_dir=spool_dir,
        flush_interval=0.5,
        service_name="shop",
    )
    started = await start_usage_tracker(settings)
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture
async def tracker(
    embedded_nats: EmbeddedNats, topology: Topology, tmp_path: Path
) -> AsyncIterator[UsageTracker]:
    async with shop_tracker(embedded_nats, topology, tmp_path / "spool") as started:
        yield started


def figures(registry: CollectorRegistry) -> tuple[float | None, float | None]:
    labels = {"service": "shop"}
    return (
        registry.get_sample_value("budget_spool_depth", labels),
        registry.get_sample_value("budget_producer_connected", labels),
    )


async def test_spool_depth_follows_an_outage(
    tracker: UsageTracker, embedded_nats: EmbeddedNats
) -> None:
    registry = CollectorRegistry()
    export_tracker_metrics(tracker, registry)
    await tracker.record_usage(**CALL)
    await tracker.flush()
    assert figures(registry) == (0, 1)

    embedded_nats.kill()
    for _ in range(3):
        await tracker.record_usage(**CALL)
    await tracker.flush()
    assert figures(registry) == (3, 0)

    embedded_nats.start()

    async def resent() -> bool:
        """the reconnected tracker re-sent its spool"""
        return figures(registry) == (0, 1)

    await wait_for(resent, within=30)


async def test_a_spool_it_cannot_read_leaves_the_depth_out_and_the_scrape_whole(
    embedded_nats: EmbeddedNats, topology: Topology, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / "spool.sqlite3").write_bytes(b"not an SQLite database\n" * 100)
    async with shop_tracker(embedded_nats, topology, spool_dir) as tracker:
        registry = CollectorRegistry()
        export_tracker_metrics(tracker, registry)
        assert b"budget_producer_connected" in generate_latest(registry)
        assert figures(registry) == (None, 1)
