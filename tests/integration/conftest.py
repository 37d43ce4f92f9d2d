"""Fixtures for tests on real servers: a migrated schema, a declared log, the enforcement
stack (``stack``, in place of the live stack of tests/conftest.py), an authenticated
nats-server (``secured``, with a ``service`` connection to it) and alert receivers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from budget.natsconn import connect_nats, nats_options
from events import Topology
from projections.engine.log import declare_streams
from projections.migrate import migrate
from services.database_roles import ENFORCER_ROLE
from services.embedded import EmbeddedNats

from alerting import Mailbox, Webhook, smtp_server, webhook_server
from enforcement import EnforcementStack, enforcement_stack, stack_settings
from secured_nats import Secured, secured_nats


@pytest.fixture
def db(pg_schema_url: str) -> str:
    """A database URL whose fresh schema has every migration applied."""
    migrate(pg_schema_url)
    return pg_schema_url


@pytest.fixture
async def nc(nats_url: str, topology: Topology) -> AsyncIterator[Client]:
    """A NATS connection with this test's streams declared (and deleted afterwards)."""
    client = await nats.connect(nats_url)
    js = client.jetstream()
    await declare_streams(js, topology)
    try:
        yield client
    finally:
        for spec in (topology.event_stream, topology.dead_letter_stream):
            await js.delete_stream(spec.name)
        await client.close()


@pytest.fixture
async def private_log(embedded_nats: EmbeddedNats, topology: Topology) -> Topology:
    """``topology``'s streams declared on this test's own server (``embedded_nats``)."""
    client = await nats.connect(embedded_nats.url)
    await declare_streams(client.jetstream(), topology)
    await client.close()
    return topology


@pytest.fixture
async def stack(
    nc: Client,
    nats_url: str,
    db: str,
    door_schema_urls: dict[str, str],
    topology: Topology,
    tmp_path: Path,
) -> AsyncIterator[EnforcementStack]:
    """The policies and spend workers, the enforcer (on its own database role, as under
    ``budget up``, when the server has it), the query service and a tracker."""
    settings = stack_settings(nats_url, db, topology, tmp_path)
    enforcer_url = door_schema_urls.get(ENFORCER_ROLE)
    async with enforcement_stack(nc, settings, enforcer_url=enforcer_url) as running:
        yield running


@pytest.fixture
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A server of its own for each test: no credential may delete its streams."""
    with secured_nats(tmp_path_factory.mktemp("secured")) as server:
        yield server


@pytest.fixture
async def service(secured: Secured) -> AsyncIterator[Client]:
    """A ``service`` connection to ``secured`` with the streams declared (by the
    ``admin``, as ``budget migrate`` does: the services may not make a stream)."""
    admin = await connect_nats(
        secured.server.url, within=5, **nats_options(secured.settings("admin"))
    )
    try:
        await declare_streams(admin.jetstream(), secured.topology)
    finally:
        await admin.close()
    options = nats_options(secured.settings("service"))
    client = await connect_nats(secured.server.url, within=5, **options)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def hook() -> Iterator[Webhook]:
    """A webhook receiver that records what it is sent."""
    with webhook_server() as server:
        yield server


@pytest.fixture
def box() -> Iterator[Mailbox]:
    """An SMTP server that keeps what it is sent."""
    with smtp_server() as server:
        yield server
