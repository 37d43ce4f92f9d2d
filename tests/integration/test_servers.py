"""The server fixtures themselves: JetStream answers, schemas isolate, a restart keeps data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import psycopg
import pytest
import sqlalchemy as sa

from events import Topology
from projections.db import sqlalchemy_url
from services.embedded import EmbeddedNats, EmbeddedPostgres

from servers import schema_name_for, with_search_path

pytestmark = pytest.mark.integration


@asynccontextmanager
async def jetstream(url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def test_jetstream_on_nats_url(nats_url: str, topology: Topology) -> None:
    spec = topology.event_stream
    subject = topology.event_subject("usage.recorded")
    async with jetstream(nats_url) as js:
        await js.add_stream(name=spec.name, subjects=list(spec.subjects))
        try:
            ack = await js.publish(subject, b"hello", headers={"Nats-Msg-Id": "m1"})
            assert ack.stream == spec.name and ack.seq == 1
            dup = await js.publish(subject, b"hello", headers={"Nats-Msg-Id": "m1"})
            assert dup.duplicate

            sub = await js.pull_subscribe(subject, durable=f"{topology.prefix}-reader")
            [msg] = await sub.fetch(1, timeout=5)
            assert msg.data == b"hello"
            await msg.ack()
        finally:
            await js.delete_stream(spec.name)


def test_topologies_differ(topology: Topology) -> None:
    other = Topology(prefix="budget")
    assert topology.event_stream.name != other.event_stream.name
    assert topology.prefix.startswith("t") and len(topology.prefix) == 11


def _schema_and_count(url: str) -> tuple[str, int]:
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS probe (n int)")
        conn.execute("INSERT INTO probe VALUES (1)")
        row = conn.execute("SELECT current_schema(), count(*) FROM probe").fetchone()
    assert row is not None
    return str(row[0]), int(row[1])


def test_pg_schema_url_isolates(pg_schema_url: str, database_url: str) -> None:
    schema, count = _schema_and_count(pg_schema_url)
    assert schema.startswith("t_test_pg_schema_url_isolates_")
    assert count == 1

    # A second schema on the same database sees none of the first one's rows.
    other = schema_name_for("other")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{other}"')
    try:
        other_schema, other_count = _schema_and_count(with_search_path(database_url, other))
        assert (other_schema, other_count) == (other, 1)
        assert _schema_and_count(pg_schema_url) == (schema, 2)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{other}" CASCADE')


def test_pg_schema_url_with_sqlalchemy(pg_schema_url: str) -> None:
    engine = sa.create_engine(sqlalchemy_url(pg_schema_url))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE sa_probe (n int)"))
            schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
            table_schema = conn.execute(
                sa.text("SELECT table_schema FROM information_schema.tables WHERE table_name = :t"),
                {"t": "sa_probe"},
            ).scalar_one()
    finally:
        engine.dispose()
    assert schema == table_schema
    assert schema.startswith("t_test_pg_schema_url_with_sqlalchemy_")


async def test_pg_schema_url_with_async_psycopg(pg_schema_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_schema_url) as conn:
        cur = await conn.execute("SELECT current_schema()")
        row = await cur.fetchone()
    assert row is not None and str(row[0]).startswith("t_test_pg_schema_url_with_async")


def test_with_search_path_keeps_other_options() -> None:
    url = with_search_path("postgresql://u@/db?host=/tmp/x&options=-cstatement_timeout%3D5", "s1")
    assert url == (
        "postgresql://u@/db?host=/tmp/x&options=-cstatement_timeout%3D5%20-csearch_path%3Ds1"
    )
    assert with_search_path("postgresql://u@h/db", "s") == (
        "postgresql://u@h/db?options=-csearch_path%3Ds"
    )


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_embedded_nats_restart_keeps_stream(
    embedded_nats: EmbeddedNats, topology: Topology, kill: bool
) -> None:
    spec = topology.event_stream
    subject = topology.event_subject("usage.recorded")
    url_before = embedded_nats.url
    async with jetstream(embedded_nats.url) as js:
        await js.add_stream(name=spec.name, subjects=list(spec.subjects))
        for i in range(3):
            await js.publish(subject, f"m{i}".encode())

    embedded_nats.restart(kill=kill)
    assert embedded_nats.url == url_before

    async with jetstream(embedded_nats.url) as js:
        info = await js.stream_info(spec.name)
        assert info.state.messages == 3
        msg = await js.get_msg(spec.name, 3)
        assert msg.data == b"m2"


def test_embedded_nats_kill_then_start(embedded_nats: EmbeddedNats) -> None:
    pid = embedded_nats.pid
    embedded_nats.kill()
    assert not embedded_nats.running
    embedded_nats.start()
    assert embedded_nats.running and embedded_nats.pid != pid


def test_embedded_postgres_restart_keeps_data(embedded_postgres: EmbeddedPostgres) -> None:
    with psycopg.connect(embedded_postgres.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    embedded_postgres.restart(immediate=True)  # crash-like: recovery on start
    with psycopg.connect(embedded_postgres.url) as conn:
        row = conn.execute("SELECT n FROM kept").fetchone()
    assert row == (42,)
