"""A script that runs ``asyncio.run`` more than once (or a host's test suite, one loop per
test) gets a working tracker in each loop: the process's tracker of an ended loop is
abandoned, what it held spooled, and a new one started; the manager, alert engine and
report generator follow it, and the locks of their getters work in each loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx2
import nats
import openai
import pytest

import budget
import budget.alerts
import budget.manager
import budget.reports
import budget.tracker
from budget import get_alert_engine, get_budget_manager, get_report_generator, get_usage_tracker
from budget.config import Settings
from budget.spool import Spool
from events import Topology
from projections.engine.log import declare_streams

from producing import stored_event_ids
from provider_mocks import ProviderApi

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def no_process_tracker(monkeypatch: pytest.MonkeyPatch) -> None:
    for module, name in [
        (budget.tracker, "_tracker"),
        (budget.manager, "_manager"),
        (budget.alerts, "_engine"),
        (budget.reports, "_generator"),
    ]:
        monkeypatch.setattr(module, name, None)


def test_each_asyncio_run_records_with_a_tracker_on_its_own_loop(
    nats_url: str, topology: Topology, tmp_path: Path
) -> None:
    settings = Settings(
        nats_url=nats_url, subject_prefix=topology.prefix, spool_dir=tmp_path / "spool"
    )
    recorded: list[str] = []
    helpers: list[object] = []

    async def script_run(first: bool) -> None:
        if first:
            client = await nats.connect(nats_url)
            await declare_streams(client.jetstream(), topology)
            await client.close()
        # Asked for together: the getters' locks are contended in each loop.
        tracker, manager, engine, generator = await asyncio.gather(
            get_usage_tracker(settings),
            get_budget_manager(settings),
            get_alert_engine(settings),
            get_report_generator(settings),
        )
        for _ in range(3):
            event = await tracker.record_usage(
                model="gpt-4o", provider="openai", input_tokens=500, output_tokens=250
            )
            recorded.append(str(event.event_id))
        async with asyncio.timeout(10):  # it waited forever on the first loop's tracker
            await tracker.flush()
        assert manager.tracker is tracker and engine.tracker is tracker
        assert generator is await get_report_generator()
        helpers.extend([manager, engine, generator])
        if not first:
            await tracker.close()

    asyncio.run(script_run(first=True))  # returns without closing the tracker, as scripts do
    asyncio.run(script_run(first=False))

    assert helpers[3] is not helpers[0] and helpers[4] is not helpers[1]
    assert helpers[5] is not helpers[2]
    stored = asyncio.run(stored_event_ids(nats_url, topology))
    assert sorted(stored) == sorted(recorded)


def test_an_instrumented_client_records_with_each_run_s_tracker(
    nats_url: str, topology: Topology, tmp_path: Path
) -> None:
    """A client instrumented once, with the process's tracker, and called in two
    ``asyncio.run``s records each run's call with that run's tracker: not with the first
    run's, whose loop has ended (the second run's call raised "Event loop is closed")."""
    settings = Settings(  # no enforcer here: fail_open lets the checks admit the calls
        nats_url=nats_url,
        subject_prefix=topology.prefix,
        spool_dir=tmp_path / "spool",
        fail_open=True,
    )
    api = ProviderApi()
    client = budget.instrument(
        openai.AsyncOpenAI(
            api_key="sk-test", http_client=httpx2.AsyncClient(transport=api.transport())
        )
    )
    trackers = []

    async def script_run(first: bool) -> None:
        if first:
            nc = await nats.connect(nats_url)
            await declare_streams(nc.jetstream(), topology)
            await nc.close()
        tracker = await get_usage_tracker(settings)
        await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=10
        )
        async with asyncio.timeout(10):
            await tracker.flush()
        trackers.append(tracker)
        if not first:
            await tracker.close()

    asyncio.run(script_run(first=True))  # returns without closing the tracker, as scripts do
    asyncio.run(script_run(first=False))

    assert trackers[1] is not trackers[0] and len(api.requests) == 2
    assert len(asyncio.run(stored_event_ids(nats_url, topology))) == 2


def test_a_tracker_the_host_closed_is_replaced_and_what_is_recorded_after_is_sent(
    nats_url: str, topology: Topology, tmp_path: Path
) -> None:
    """The host closes the process's tracker (a lifespan's shutdown) and goes on recording
    on the same loop (its next start, a test's next app): ``get_usage_tracker`` and an
    instrumented client get a new tracker, and the calls are sent to NATS, not left in
    the closed one's spool for another process to send some day."""
    settings = Settings(  # no enforcer here: fail_open lets the checks admit the calls
        nats_url=nats_url,
        subject_prefix=topology.prefix,
        spool_dir=tmp_path / "spool",
        fail_open=True,
    )
    client = budget.instrument(
        openai.AsyncOpenAI(
            api_key="sk-test",
            http_client=httpx2.AsyncClient(transport=ProviderApi().transport()),
        )
    )

    async def run() -> None:
        nc = await nats.connect(nats_url)
        await declare_streams(nc.jetstream(), topology)
        await nc.close()
        for _ in range(2):
            tracker = await get_usage_tracker(settings)
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=10
            )
            await tracker.record_usage(model="gpt-4o", provider="openai", input_tokens=10)
            await tracker.close()
        again = await get_usage_tracker(settings)
        await again.close()
        assert again is not tracker

    asyncio.run(run())
    assert len(asyncio.run(stored_event_ids(nats_url, topology))) == 4
    spool = Spool(tmp_path / "spool")
    assert len(spool) == 0
    spool.close()
