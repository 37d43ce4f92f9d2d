"""The network doors' PostgreSQL roles (services.database_roles) on a real server, granted
by ``prepare`` (``budget migrate``, ``budget up``) as the services' role.

The HTTP API's role ``budget_api`` reads every table and view, of this version and of
later ones, and writes console sessions alone: it drops nothing, mints no API key and
writes no projection. That the API serves on it: tests/api/test_database_role.py. The
query service's ``budget_query`` reads the same but the console sessions, writes nothing,
and the query service answers every question on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from nats.aio.client import Client
from psycopg import sql

from budget.config import Settings
from events import Topology, utc_now
from events.queries import AlertsQuery, ReportQuery, SpendQuery
from projections.api_keys import ApiKeysProjection
from projections.engine.checkpoints import create_version, ensure_projection, point_views_at
from projections.migrate import migrate
from projections.registry import PROJECTIONS
from services.database_roles import API_ROLE, QUERY_ROLE
from services.ops import prepare

from enforcement import stack_settings
from servers import create_schema, drop_schema, schema_name_for, with_search_path
from support import query_service

pytestmark = pytest.mark.integration

Denied = psycopg.errors.InsufficientPrivilege


@dataclass(frozen=True)
class Urls:
    owner: str
    api: str
    query: str


@pytest.fixture
def urls(
    request: pytest.FixtureRequest, database_url: str, door_database_urls: dict[str, str]
) -> Iterator[Urls]:
    """A fresh schema, as the services' role (its owner) and as each door's role."""
    missing = {API_ROLE, QUERY_ROLE} - set(door_database_urls)
    if missing:
        pytest.fail(f"the test database has no role {', '.join(sorted(missing))}", pytrace=False)
    schema = schema_name_for(request.node.name)
    create_schema(database_url, schema)
    try:
        yield Urls(
            with_search_path(database_url, schema),
            with_search_path(door_database_urls[API_ROLE], schema),
            with_search_path(door_database_urls[QUERY_ROLE], schema),
        )
    finally:
        drop_schema(database_url, schema)


async def _prepare(urls: Urls, nats_url: str, topology: Topology, tmp_path: Path) -> None:
    settings = Settings(
        nats_url=nats_url,
        database_url=urls.owner,
        subject_prefix=topology.prefix,
        spool_dir=tmp_path / "spool",
    )
    await prepare(nats_url, urls.owner, settings)


def _relations(owner_url: str) -> dict[str, str]:
    """Every table and view of the schema: name -> kind (``r``, ``p``, ``v``)."""
    with psycopg.connect(owner_url) as conn:
        rows = conn.execute(
            "SELECT c.relname, c.relkind FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm')"
        ).fetchall()
    return {str(name): str(kind) for name, kind in rows}


def _refused(conn: psycopg.Connection[tuple[object, ...]], statement: str) -> None:
    with pytest.raises(Denied), conn.transaction():
        conn.execute(statement.encode())


async def test_the_api_role_reads_all_and_drops_mints_and_writes_no_projection(
    urls: Urls, nats_url: str, topology: Topology, nc: Client, tmp_path: Path
) -> None:
    await _prepare(urls, nats_url, topology, tmp_path)
    relations = _relations(urls.owner)
    assert {"api_keys_v1", "api_keys", "spend_buckets_v1", "spend_buckets"} <= set(relations)
    assert {"reservation_holds", "projection_registry", "console_sessions"} <= set(relations)
    key_row = "'k-forged', 'forged-hash', 'forged', 'admin', NULL, now()"
    with psycopg.connect(urls.api, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (API_ROLE,)
        for name in relations:  # it reads everything
            conn.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(sql.Identifier(name)))
        # what the security review did as the owner's role
        _refused(conn, "DROP TABLE reservation_holds")
        _refused(conn, "DROP TABLE projection_registry CASCADE")
        columns = "(key_id, key_hash, name, role, created_by, created_at)"
        _refused(conn, f"INSERT INTO api_keys_v1 {columns} VALUES ({key_row})")
        _refused(conn, f"INSERT INTO api_keys {columns} VALUES ({key_row})")  # the view
        _refused(conn, "UPDATE api_keys_v1 SET revoked_at = NULL")
        # no write to any projection, registry or hold (views: not even the updatable
        # ones), no DDL
        for name, kind in relations.items():
            if name == "console_sessions":
                continue
            may = conn.execute(
                "SELECT has_table_privilege(%s, 'INSERT, UPDATE, DELETE, TRUNCATE,"
                " REFERENCES, TRIGGER')",
                (sql.Identifier(name).as_string(conn),),
            ).fetchone()
            assert may == (False,), name
            if kind == "v":
                continue
            table = sql.Identifier(name).as_string(conn)
            _refused(conn, f"DELETE FROM {table}")
            _refused(conn, f"INSERT INTO {table} DEFAULT VALUES")
            _refused(conn, f"TRUNCATE {table}")
            _refused(conn, f"ALTER TABLE {table} ADD COLUMN intruder int")
        _refused(conn, "UPDATE spend_buckets_v1 SET scope = scope")
        _refused(conn, "CREATE TABLE intruder (n int)")
        _refused(conn, "CREATE VIEW intruder AS SELECT 1")
        _refused(conn, "DROP VIEW spend_buckets")
        # its own writes: a console session begun, ended, swept; nothing else of it
        conn.execute("INSERT INTO console_sessions (session_id, key_id) VALUES ('s1', 'k1')")
        conn.execute("UPDATE console_sessions SET ended_at = now() WHERE session_id = 's1'")
        _refused(conn, "UPDATE console_sessions SET key_id = 'k-admin'")
        conn.execute("DELETE FROM console_sessions WHERE session_id = 's1'")
        _refused(conn, "TRUNCATE console_sessions")
    with psycopg.connect(urls.owner) as conn:
        assert conn.execute("SELECT count(*) FROM api_keys").fetchone() == (0,)


async def test_later_projection_versions_are_read_and_never_written(
    urls: Urls, nats_url: str, topology: Topology, nc: Client, tmp_path: Path
) -> None:
    """A rebuild's new version and the views pointed at it, made by the workers' role after
    the grants: the API reads them and may not write them."""
    await _prepare(urls, nats_url, topology, tmp_path)
    keys = ApiKeysProjection()
    async with await psycopg.AsyncConnection.connect(urls.owner, autocommit=True) as owner:
        await create_version(owner, keys, 2)
        await point_views_at(owner, keys, 2)
        await owner.execute(
            "INSERT INTO api_keys_v2 (key_id, key_hash, name, role, created_at)"
            " VALUES ('k2', 'h2', 'rebuilt', 'viewer', %s)",
            (datetime.now(UTC),),
        )
    with psycopg.connect(urls.api, autocommit=True) as conn:
        assert conn.execute("SELECT key_id FROM api_keys").fetchall() == [("k2",)]
        assert conn.execute("SELECT count(*) FROM api_keys_v2").fetchone() == (1,)
        _refused(
            conn,
            "INSERT INTO api_keys_v2 (key_id, key_hash, name, role, created_at)"
            " VALUES ('k3', 'h3', 'forged', 'admin', now())",
        )
        _refused(conn, "DROP TABLE api_keys_v2 CASCADE")


async def test_an_existing_database_gets_the_grants_on_its_next_migration(
    urls: Urls, nats_url: str, topology: Topology, nc: Client, tmp_path: Path
) -> None:
    """A database an earlier version made (migrations and projections, no grants): the
    API's role reads nothing until ``budget migrate`` (or ``budget up``) runs again."""
    migrate(urls.owner)
    async with await psycopg.AsyncConnection.connect(urls.owner, autocommit=True) as owner:
        for projection in PROJECTIONS.values():
            await ensure_projection(owner, projection)
    # no usage of the schema yet: its tables are not even found
    with psycopg.connect(urls.api) as conn, pytest.raises(psycopg.errors.UndefinedTable):
        conn.execute("SELECT * FROM api_keys")
    await _prepare(urls, nats_url, topology, tmp_path)
    await _prepare(urls, nats_url, topology, tmp_path)  # again: idempotent
    with psycopg.connect(urls.api, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM api_keys").fetchone() == (0,)
        _refused(conn, "DELETE FROM api_keys_v1")


async def test_the_query_role_reads_all_but_sessions_and_writes_nothing(
    urls: Urls, nats_url: str, topology: Topology, nc: Client, tmp_path: Path
) -> None:
    await _prepare(urls, nats_url, topology, tmp_path)
    relations = _relations(urls.owner)
    with psycopg.connect(urls.query, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (QUERY_ROLE,)
        for name in relations:
            if name != "console_sessions":
                conn.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(sql.Identifier(name)))
            may = conn.execute(
                "SELECT has_table_privilege(%s, 'INSERT, UPDATE, DELETE, TRUNCATE,"
                " REFERENCES, TRIGGER')",
                (sql.Identifier(name).as_string(conn),),
            ).fetchone()
            assert may == (False,), name
        _refused(conn, "SELECT session_id FROM console_sessions")
        _refused(conn, "INSERT INTO console_sessions (session_id, key_id) VALUES ('s', 'k')")
        _refused(conn, "DROP TABLE reservation_holds")
        _refused(conn, "DELETE FROM reservation_holds")
        _refused(
            conn,
            "INSERT INTO api_keys_v1 (key_id, key_hash, name, role, created_at)"
            " VALUES ('k', 'h', 'forged', 'admin', now())",
        )
        _refused(conn, "CREATE TABLE intruder (n int)")


async def test_the_query_service_answers_every_question_as_its_own_role(
    urls: Urls, nats_url: str, topology: Topology, nc: Client, tmp_path: Path
) -> None:
    """Policies, spend, rules, alerts, deliveries, every kind of report and a projection's
    position, asked over NATS as a host app does."""
    await _prepare(urls, nats_url, topology, tmp_path)
    settings = stack_settings(nats_url, urls.query, topology, tmp_path)
    now = utc_now()
    async with query_service(nc, settings) as queries:
        assert await queries.policies() == []
        assert await queries.spend(SpendQuery()) == []
        assert await queries.rules()  # the default rules
        assert await queries.alerts(AlertsQuery()) == []
        assert await queries.deliveries(uuid.uuid4()) == []
        for kind in ("custom", "summary", "trend", "comparison", "projection", "history"):
            query = ReportQuery(
                kind=kind,
                start=now - timedelta(days=2),
                end=now,
                previous_start=now - timedelta(days=4),
                previous_end=now - timedelta(days=2),
            )
            await queries.report(query)
        await queries.wait_applied("spend", 0, within=1)
