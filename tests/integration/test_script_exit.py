"""A script that records usage and exits without closing its tracker loses nothing: the
process's tracker is closed at exit (``budget.tracker``), after what its sync clients
handed over has been run (``budget.instrumentation.lifecycle``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest

from budget.spool import Spool
from events import Topology
from services.embedded import EmbeddedNats

from producing import spool_locked, stored_event_ids
from support import ROOT

pytestmark = pytest.mark.integration

CALLS = 20


def exiting_client(
    kind: str, nats_url: str, topology: Topology, spool: Path, cwd: Path
) -> subprocess.Popen[str]:
    """``exiting_client.py`` making ``CALLS`` calls with a ``kind`` (sync, async) client."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "BUDGET_NATS_URL": nats_url,
        "BUDGET_SUBJECT_PREFIX": topology.prefix,
        "BUDGET_SPOOL_DIR": str(spool),
        "BUDGET_FAIL_OPEN": "true",  # no enforcer here
    }
    env.pop("BUDGET_CONFIG", None)
    script = Path(__file__).with_name("exiting_client.py")
    return subprocess.Popen(
        [sys.executable, str(script), kind, str(CALLS)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def spooled_ids(spool: Path) -> list[str]:
    store = Spool(spool)
    try:
        return [e.event_id for e in store.oldest(CALLS * 2)]
    finally:
        store.close()


def read_until(stream: IO[str], line_part: str) -> list[str]:
    """The lines of ``stream`` up to the first holding ``line_part``, or to its end."""
    lines = []
    for line in stream:
        lines.append(line)
        if line_part in line:
            break
    return lines


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_script_exiting_without_closing_its_tracker_stores_or_spools_each_call_once(
    kind: str, embedded_nats: EmbeddedNats, private_log: Topology, tmp_path: Path
) -> None:
    """Each call is stored once in JetStream, or (the async script's loop having ended
    with events in flight) in the spool, for the next process to send."""
    spool = tmp_path / "spool"
    client = exiting_client(kind, embedded_nats.url, private_log, spool, tmp_path)
    out, err = await asyncio.to_thread(client.communicate, timeout=120)
    assert client.returncode == 0, err
    assert out.strip() == f"made {CALLS} calls"
    stored = await stored_event_ids(embedded_nats.url, private_log)
    assert len(stored) == len(set(stored))
    assert len(set(stored) | set(spooled_ids(spool))) == CALLS


async def test_a_sync_script_exiting_while_nats_is_down_waits_for_the_spool_to_take_each_call(
    embedded_nats: EmbeddedNats, private_log: Topology, tmp_path: Path
) -> None:
    """NATS is down, and another process holds the spool's write lock until the exiting
    script closes its tracker: the exit waits for the spool, which then has every call."""
    spool = tmp_path / "spool"
    embedded_nats.kill()
    with spool_locked(spool):
        client = exiting_client("sync", embedded_nats.url, private_log, spool, tmp_path)
        assert client.stderr is not None
        await asyncio.to_thread(read_until, client.stderr, "closing the budget tracker at exit")
    _, err = await asyncio.to_thread(client.communicate, timeout=120)
    assert client.returncode == 0, err
    assert len(set(spooled_ids(spool))) == CALLS


async def test_a_script_whose_spool_directory_cannot_be_made_records_its_calls(
    embedded_nats: EmbeddedNats, private_log: Topology, tmp_path: Path
) -> None:
    """The spool's directory lies under a file: NATS being up, nothing needs the spool,
    and every call goes ahead and is stored once."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    client = exiting_client("sync", embedded_nats.url, private_log, blocker / "spool", tmp_path)
    out, err = await asyncio.to_thread(client.communicate, timeout=120)
    assert client.returncode == 0, err
    assert out.strip() == f"made {CALLS} calls"
    stored = await stored_event_ids(embedded_nats.url, private_log)
    assert len(set(stored)) == len(stored) == CALLS
