"""The Node.js publisher example (examples/node-publisher) on the real stack: run with the
host credential as ``budget up`` hands it out, it records usage events that the spend
worker counts to the exact cost; an event the JSON Schema refuses is never published.

Needs node and npm (``./run-tests`` installs Debian's when missing); the example's
dependencies come from its lockfile (``npm ci``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import pytest
from nats.aio.client import Client

from events import UsageRecorded, decode
from events.codec import HEADER_MSG_ID
from projections.engine.deadletter import recent_dead_letters

from secured_nats import Secured
from support import ROOT, budget_process, rows, wait_for

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "examples" / "node-publisher"


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def installed() -> None:
    """The example's dependencies, exactly as its lockfile pins them."""
    npm = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, capture_output=True, text=True
    )
    assert npm.returncode == 0, npm.stderr


async def publish_usage(*args: str, env: dict[str, str]) -> Run:
    """``node publish-usage.mjs ARGS`` with only PATH and ``env`` in its environment."""
    process = await asyncio.create_subprocess_exec(
        "node",
        str(EXAMPLE / "publish-usage.mjs"),
        *args,
        env={"PATH": os.environ["PATH"], **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def host_env(secured: Secured, *, password_in_env: bool = False) -> dict[str, str]:
    """What a host app is told to export (``budget up``'s banner), or the password itself."""
    env = {
        "BUDGET_NATS_URL": secured.server.url,
        "BUDGET_SUBJECT_PREFIX": secured.topology.prefix,
        **secured.credentials.env("host"),
    }
    if password_in_env:
        env["BUDGET_NATS_PASSWORD"] = secured.credentials.password_file("host").read_text().strip()
        del env["BUDGET_NATS_PASSWORD_FILE"]
    return env


async def stored(service: Client, secured: Secured, seq: int) -> tuple[UsageRecorded, str]:
    """The event at ``seq`` in the log (published on the host credential's own subject),
    and its Nats-Msg-Id."""
    message = await service.jetstream().get_msg(secured.topology.event_stream.name, seq)
    assert message.subject == secured.topology.event_subject(
        UsageRecorded.SUBJECT, publisher="host"
    )
    event = decode(message.data)
    assert isinstance(event, UsageRecorded)
    return event, (message.headers or {})[HEADER_MSG_ID]


@pytest.fixture
async def spend_worker(
    secured: Secured, service: Client, db: str, tmp_path: Path
) -> AsyncIterator[None]:
    """``budget worker spend`` with the service credential, running."""
    heartbeat = tmp_path / "heartbeat"
    worker = budget_process(
        ["worker", "spend"],
        nats_url=secured.server.url,
        database_url=db,
        topology=secured.topology,
        BUDGET_HEARTBEAT_FILE=str(heartbeat),
        **secured.credentials.env("service"),
    )
    try:

        async def running() -> bool:
            """the spend worker touched its heartbeat file"""
            return heartbeat.exists()

        await wait_for(running, within=60)
        yield
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0


async def test_events_from_the_node_example_are_counted_to_the_exact_cost(
    installed: None, secured: Secured, service: Client, db: str, spend_worker: None
) -> None:
    first = await publish_usage(
        *("--provider", "anthropic", "--model", "claude-sonnet-4-5"),
        *("--input-tokens", "1200", "--output-tokens", "300", "--cost", "0.0081"),
        *("--user", "alice", "--project", "apollo", "--tag", "team=search"),
        env=host_env(secured, password_in_env=True),
    )
    second = await publish_usage(
        *("--model", "gpt-4o-mini", "--input-tokens", "10", "--cached-input-tokens", "5"),
        *("--output-tokens", "7", "--reasoning-tokens", "3", "--user", "alice"),
        *("--cost", "0.000123456789012345678901"),
        env=host_env(secured),
    )
    assert (first.returncode, first.stderr, second.returncode, second.stderr) == (0, "", 0, "")
    ids = [UUID(first.stdout.strip()), UUID(second.stdout.strip())]
    assert [i.version for i in ids] == [7, 7]

    (one, one_msg_id), (two, two_msg_id) = [await stored(service, secured, s) for s in (1, 2)]
    assert [one.event_id, two.event_id] == ids
    assert [one_msg_id, two_msg_id] == [str(i) for i in ids]
    assert (one.provider, one.model, one.project_id, one.tags) == (
        "anthropic",
        "claude-sonnet-4-5",
        "apollo",
        {"team": "search"},
    )
    assert (one.usage.input_uncached, one.usage.output_text) == (1200, 300)
    assert (two.usage.input_cache_read, two.usage.output_reasoning) == (5, 3)
    assert one.producer is not None and one.producer.service == "budget-node-publisher"

    total = Decimal("0.0081") + Decimal("0.000123456789012345678901")

    async def counted() -> bool:
        """the spend worker counted both events for alice"""
        if await rows(db, "SELECT to_regclass('spend_buckets')") == [(None,)]:
            return False  # the worker has yet to create its tables
        sums = "SELECT sum(requests), sum(cost) FROM spend_buckets"
        return await rows(db, f"{sums} WHERE scope = 'user' AND scope_key = 'alice'") == [
            (2, total)
        ]

    await wait_for(counted, within=60)
    assert await rows(db, "SELECT event_id, cost FROM spend_ledger ORDER BY stream_seq") == [
        (ids[0], Decimal("0.0081")),
        (ids[1], Decimal("0.000123456789012345678901")),
    ]
    assert await recent_dead_letters(service.jetstream(), secured.topology) == []


async def test_an_event_the_schema_refuses_is_never_published(
    installed: None, secured: Secured, service: Client
) -> None:
    refused = await publish_usage(
        "--model", "gpt-4o", "--output-tokens=-5", "--kind", "video", env=host_env(secured)
    )
    assert (refused.returncode, refused.stdout) == (2, "")
    schema = ROOT / "docs" / "schemas" / "UsageRecorded.v2.json"
    assert refused.stderr == (
        f"publish-usage: the UsageRecorded event does not match {schema};"
        " nothing was published:\n"
        "  /kind: must be equal to one of the allowed values (chat, embedding, image, audio)\n"
        "  /usage/output_text: must be >= 0\n"
    )
    # The positive signal: an honest event published after it is stored, and alone.
    honest = await publish_usage("--model", "gpt-4o", "--cost", "0.01", env=host_env(secured))
    assert honest.returncode == 0, honest.stderr
    info = await service.jetstream().stream_info(secured.topology.event_stream.name)
    assert info.state.messages == 1
    event, _ = await stored(service, secured, 1)
    assert str(event.event_id) == honest.stdout.strip()


async def test_a_refused_credential_or_subject_is_reported_and_nothing_is_stored(
    installed: None, secured: Secured, service: Client
) -> None:
    host = host_env(secured, password_in_env=True)
    wrong_password = await publish_usage(
        "--model", "gpt-4o", "--cost", "0.01", env={**host, "BUDGET_NATS_PASSWORD": "wrong"}
    )
    assert (wrong_password.returncode, wrong_password.stdout) == (1, "")
    assert wrong_password.stderr.endswith(
        " not recorded: the NATS server refused the credential (BUDGET_NATS_USER and"
        " BUDGET_NATS_PASSWORD or BUDGET_NATS_PASSWORD_FILE)\n"
    )
    other_prefix = await publish_usage(
        "--model", "gpt-4o", "--cost", "0.01", env={**host, "BUDGET_SUBJECT_PREFIX": "other"}
    )
    assert (other_prefix.returncode, other_prefix.stdout) == (1, "")
    assert other_prefix.stderr.endswith(
        """ not recorded: 'Permissions Violation for Publish to"""
        """ "other.events.usage.recorded.host"': a host credential records usage on its own"""
        " subject (its BUDGET_NATS_USER) under its stack's subject prefix only"
        " (BUDGET_SUBJECT_PREFIX)\n"
    )
    # The positive signal: an honest event published after them is stored, and alone.
    honest = await publish_usage("--model", "gpt-4o", "--cost", "0.01", env=host)
    assert honest.returncode == 0, honest.stderr
    info = await service.jetstream().stream_info(secured.topology.event_stream.name)
    assert info.state.messages == 1
