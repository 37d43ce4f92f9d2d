"""Fixtures for tests on real servers: a migrated schema and a declared log."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

from events import Topology
from projections.log import declare_streams
from projections.migrate import migrate


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
