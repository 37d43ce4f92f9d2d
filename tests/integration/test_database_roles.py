"""The network doors' PostgreSQL roles (services.database_roles) on a real server, granted
by ``prepare`` (``budget migrate``, ``budget up``) as the services' role.

The HTTP API's role ``budget_api`` reads every table and view, of this version and of
later ones, and writes console sessions alone: it drops nothing, mints no API key and
writes no projection. That the API serves on it: tests/api/test_database_role.py. The
query service's ``budget_query`` reads the same but the console sessions, writes nothing,
and the query service answers every question on it. The enforcer's ``budget_enforcer``
reads as much and inserts and deletes reservation holds alone, and the enforcer decides,
reserves, releases and expires on it; the notifier's ``budget_notifier`` reads as much and
records deliveries alone (an outcome in the outbox, a row in the console's feed), and the
notifier sends, retries and skips on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from nats.aio.client import Client
from psycopg import sql

from budget.config import Settings
from budget.rpc import ask
from events import Topology, utc_now
from events.queries import AlertsQuery, ReportQuery, SpendQuery
from events.rpc import RPC_SNAPSHOT, CallAttributes, Snapshot
from projections.api_keys import ApiKeysProjection
from projections.engine.checkpoints import create_version, ensure_projection, point_views_at
from projections.migrate import migrate
from projections.registry import PROJECTIONS
from services.database_roles import API_ROLE, ENFORCER_ROLE, NOTIFIER_ROLE, QUERY_ROLE
from services.enforcer import EnforcerConfig
from services.notifier import NotifierConfig
from services.ops import prepare

from alerting import Mailbox, Webhook, alert_settings, notifier, outbox, queue_alerts
from enforcement import enforcement_stack, stack_settings
from servers import create_schema, drop_schema, schema_name_for, with_search_path
from support import query_service, rows, wait_for

pytestmark = pytest.mark.integration

Denied = psycopg.errors.InsufficientPrivilege


@dataclass(frozen=True)
class Urls:
    owner: str
    api: str
    query: str
    enforcer: str
    notifier: str


@pytest.fixture
def urls(
    request: pytest.FixtureRequest, database_url: str, door_database_urls: dict[str, str]
) -> Iterator[Urls]:
    """A fresh schema, as the services' role (its owner) and as each door's role."""
    missing = {API_ROLE, QUERY_ROLE, ENFORCER_ROLE, NOTIFIER_ROLE} - set(door_database_urls)
    if missing:
        pytest.fail(f"the test database has no role {', '.join(sorted(missing))}", pytrace=False)
    schema = schema_name_for(request.node.name)
    create_schema(database_url, schema)
    try:
        yield Urls(
            with_search_path(database_url, schema),
            with_search_path(door_database_urls[API_ROLE], schema),
            with_search_path(door_database_urls[QUERY_ROLE], schema),
            with_search_path(door_database_urls[ENFORCER_ROLE], schema),
            with_search_path(door_database_urls[NOTIFIER_ROLE], schema),
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


_WRITES = "INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER"


def _writes(conn: psycopg.Connection[tuple[object, ...]], relations: dict[str, str]) -> set[str]:
    """The relations on which the connection's role holds any write privilege (a column's
    included)."""
    held = set()
    for name in relations:
        table = sql.Identifier(name).as_string(conn)
        row = conn.execute(
            "SELECT has_table_privilege(%s, %s)"
            " OR has_any_column_privilege(%s, 'INSERT, UPDATE, REFERENCES')",
            (table, _WRITES, table),
        ).fetchone()
        if row and row[0]:
            held.add(name)
    return held


def _refused_everywhere_but(
    conn: psycopg.Connection[tuple[object, ...]], relations: dict[str, str], own: set[str]
) -> None:
    """Every relation but the sessions reads; none but ``own`` takes a write; a table,
    its own ones too, cannot be dropped, altered or truncated, nor one created; no API key
    is minted and no projection written; the console's sessions are not even read."""
    for name in relations:
        if name != "console_sessions":
            conn.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(sql.Identifier(name)))
    assert _writes(conn, relations) == own
    for name, kind in relations.items():
        if kind != "v":
            table = sql.Identifier(name).as_string(conn)
            _refused(conn, f"TRUNCATE {table}")
            _refused(conn, f"ALTER TABLE {table} ADD COLUMN intruder int")
            _refused(conn, f"DROP TABLE {table} CASCADE")
    _refused(conn, "SELECT session_id FROM console_sessions")
    _refused(
        conn,
        "INSERT INTO api_keys_v1 (key_id, key_hash, name, role, created_at)"
        " VALUES ('k', 'h', 'forged', 'admin', now())",
    )
    _refused(conn, "UPDATE spend_buckets_v1 SET scope = scope")
    _refused(conn, "DELETE FROM projection_registry")
    _refused(conn, "CREATE TABLE intruder (n int)")
    _refused(conn, "DROP VIEW spend_buckets")


async def test_the_enforcer_role_writes_reservation_holds_alone(
    urls: Urls, nats_url: str, topology: Topology, nc: Client, tmp_path: Path
) -> None:
    """It inserts a hold and deletes one (a release, an expiry); it changes no hold's
    amount or caller, writes no projection, outbox or session, mints no key, drops
    nothing."""
    await _prepare(urls, nats_url, topology, tmp_path)
    relations = _relations(urls.owner)
    hold = (
        "INSERT INTO reservation_holds (reservation_id, policy_id, window_key, window_start,"
        " amount, expires_at, caller, window_end)"
        " VALUES ('r1', 'p', 'k', now(), 1, now() + interval '1 minute', 'host', now())"
    )
    with psycopg.connect(urls.enforcer, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (ENFORCER_ROLE,)
        _refused_everywhere_but(conn, relations, {"reservation_holds"})
        conn.execute(hold.encode())
        _refused(conn, "UPDATE reservation_holds SET amount = 0")
        _refused(conn, "UPDATE reservation_holds SET caller = 'another host'")
        _refused(
            conn,
            "INSERT INTO alert_outbox (alert_id, channel, subject, payload)"
            " VALUES (gen_random_uuid(), 'webhook', 's', '{}')",
        )
        _refused(conn, "UPDATE alert_outbox SET status = 'sent'")
        assert conn.execute("DELETE FROM reservation_holds RETURNING amount").fetchall() == [(1,)]


async def test_the_enforcer_decides_reserves_releases_and_expires_as_its_own_role(
    urls: Urls, nats_url: str, topology: Topology, nc: Client, tmp_path: Path
) -> None:
    """A BLOCK policy read, checks judged and held, a refusal, a release, a snapshot and
    an expired hold swept, by an enforcer connected as ``budget_enforcer``."""
    settings = stack_settings(nats_url, urls.owner, topology, tmp_path)
    config = EnforcerConfig(reservation_ttl=0.5, cleanup_interval=0.2)
    async with enforcement_stack(nc, settings, config, enforcer_url=urls.enforcer) as stack:
        assert stack.enforcer is not None
        assert stack.enforcer.settings.database_url == urls.enforcer
        await stack.set_policy(limit_amount="0.25", action="block", policy_id="cap")
        await stack.enforcer_applies_policies()
        tracker = stack.tracker
        dime = Decimal("0.10")
        checks = [
            await tracker.check_budget("gpt-4o", user_id="u1", estimated_cost=dime)
            for _ in range(3)
        ]
        assert [c.allowed for c in checks] == [True, True, False]
        assert len(await stack.holds()) == 2
        first = checks[0].reservation_id
        assert first is not None
        await tracker.release_reservation(first)
        assert len(await stack.holds()) == 1
        subject = topology.rpc_subject(RPC_SNAPSHOT, caller=settings.caller)
        call = CallAttributes(model="gpt-4o", user_id="u1")
        [window] = (await ask(nc, subject, call, Snapshot, within=5)).windows
        assert window.spent == dime

        async def expired() -> bool:
            """the other hold expired and the enforcer's job deleted it"""
            return await stack.holds() == []

        await wait_for(expired, within=10)
        sessions = await rows(
            urls.owner,
            "SELECT DISTINCT usename FROM pg_stat_activity"
            " WHERE datname = current_database() AND usename = %s",
            (ENFORCER_ROLE,),
        )
        assert sessions == [(ENFORCER_ROLE,)]


async def test_the_notifier_role_records_deliveries_alone(
    urls: Urls, nats_url: str, topology: Topology, nc: Client, tmp_path: Path
) -> None:
    """It records a delivery's outcome and adds to the console's feed; it cannot queue,
    rewrite (content, channel, subject) or delete an alert, touch a hold or a session,
    write a projection, mint a key or drop anything."""
    await _prepare(urls, nats_url, topology, tmp_path)
    relations = _relations(urls.owner)
    [alert_id] = await queue_alerts(urls.owner, 1)
    with psycopg.connect(urls.notifier, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (NOTIFIER_ROLE,)
        _refused_everywhere_but(conn, relations, {"alert_outbox", "alert_feed"})
        conn.execute(
            "UPDATE alert_outbox SET status = 'sent', attempts = attempts + 1,"
            " last_error = NULL, next_attempt_at = now(), sent_at = now()"
            " WHERE alert_id = %s",
            (alert_id,),
        )
        conn.execute(
            "INSERT INTO alert_feed (alert_id, payload) VALUES (%s, '{}')"
            " ON CONFLICT (alert_id) DO NOTHING",
            (alert_id,),
        )
        for change in (
            'payload = \'{"message": "forged"}\'',
            "channel = 'email'",
            "subject = 'forged'",
            "created_at = now()",
        ):
            _refused(conn, f"UPDATE alert_outbox SET {change}")
        _refused(
            conn,
            "INSERT INTO alert_outbox (alert_id, channel, subject, payload)"
            " VALUES (gen_random_uuid(), 'webhook', 's', '{}')",
        )
        _refused(conn, "DELETE FROM alert_outbox")
        _refused(conn, "UPDATE alert_feed SET payload = '{}'")
        _refused(conn, "DELETE FROM alert_feed")
        _refused(conn, "DELETE FROM reservation_holds")


async def test_the_notifier_sends_retries_and_skips_as_its_own_role(
    urls: Urls,
    nats_url: str,
    topology: Topology,
    nc: Client,
    tmp_path: Path,
    hook: Webhook,
    box: Mailbox,
) -> None:
    """Alerts for the webhook (one refused once, then sent), the console's feed, and a
    channel not enabled (skipped), delivered by a notifier connected as
    ``budget_notifier``."""
    await _prepare(urls, nats_url, topology, tmp_path)
    settings = alert_settings(nats_url, urls.notifier, topology, tmp_path, hook, box)
    channels = settings.alert_channels
    disabled = channels.email.model_copy(update={"enabled": False})
    settings = settings.model_copy(
        update={"alert_channels": channels.model_copy(update={"email": disabled})}
    )
    refused_once: set[str] = set()
    webhook_ids = await queue_alerts(urls.owner, 2)

    def refuse_the_first_once(key: str) -> int:
        if key == webhook_ids[0] and key not in refused_once:
            refused_once.add(key)
            return 400
        return 200

    hook.respond = refuse_the_first_once
    [feed_id] = await queue_alerts(urls.owner, 1, channel="ui")
    [mail_id] = await queue_alerts(urls.owner, 1, channel="email")
    async with notifier(nc, settings, NotifierConfig(max_backoff=0.5, poll_interval=0.2)):

        async def recorded() -> bool:
            """every delivery's outcome is recorded"""
            return all(status != "pending" for _, _, status, _ in await outbox(urls.owner))

        await wait_for(recorded, within=30)
    queued = await outbox(urls.owner)
    outcomes = {(str(a), channel): (status, n) for a, channel, status, n in queued}
    assert outcomes == {
        (webhook_ids[0], "webhook"): ("sent", 2),
        (webhook_ids[1], "webhook"): ("sent", 1),
        (feed_id, "ui"): ("sent", 1),
        (mail_id, "email"): ("skipped", 1),
    }
    assert sorted(hook.keys()) == sorted(webhook_ids)
    feed = await rows(urls.owner, "SELECT alert_id::text FROM alert_feed")
    assert feed == [(feed_id,)]
