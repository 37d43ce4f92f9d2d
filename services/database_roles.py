"""The PostgreSQL roles of the services that face the network, and what each may do.

The projection workers and the migrations connect as ``budget``
(``services.postgres_auth.SERVICE_ROLE``), which owns the database: migrations and
projection versions create tables at run time. A process that answers the network or
talks to it connects as a login role of its own that owns nothing, so a bug there cannot
drop a table, rewrite a projection or mint an API key behind the event log:

- ``budget_api`` (``budget api``: the web console and the HTTP API): reads every table and
  view of the schema, and writes console sessions only (a row per sign-in, ended at
  sign-out, swept when old). API keys, policies and usage are events on NATS that the
  workers apply, never rows it writes.
- ``budget_query`` (``budget query-service``: the host apps' questions over NATS): reads
  every table and view but the console sessions, and writes nothing.
- ``budget_enforcer`` (``budget enforcer``: the host apps' checks over NATS): reads the
  same, and inserts and deletes reservation holds, the only rows it writes (a check's
  hold; a release, an expiry, a settled hold's cleanup).
- ``budget_notifier`` (``budget notifier``: sends alerts to webhooks, mail servers, NATS):
  reads the same, records each delivery's outcome in the alert outbox (its status,
  attempts, error, times: never an alert's content, channel or subject) and adds alerts
  to the console's feed (the UI channel); nothing else.

The roles themselves (login, password) are made by whoever administers the cluster:
``services.postgres_auth.secure_cluster`` for ``budget up``, ``deploy/postgres/door-roles.sql``
under Compose. Their privileges are granted by ``grant_door_roles``, which ``budget
migrate`` (and ``budget up``) runs as the owner on every start: idempotent, so an existing
database gets them on its next migration, and ``ALTER DEFAULT PRIVILEGES`` extends the
reads to every table and view the owner creates later (a projection's next version, a
view pointed at it), with no write.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from psycopg import sql

from projections.engine.projection import Connection

__all__ = [
    "API_ROLE",
    "DOOR_ROLES",
    "ENFORCER_ROLE",
    "NOTIFIER_ROLE",
    "QUERY_ROLE",
    "grant_door_roles",
]

log = logging.getLogger(__name__)

API_ROLE = "budget_api"
QUERY_ROLE = "budget_query"
ENFORCER_ROLE = "budget_enforcer"
NOTIFIER_ROLE = "budget_notifier"

DOOR_ROLES: Mapping[str, str] = {
    "api": API_ROLE,
    "query-service": QUERY_ROLE,
    "enforcer": ENFORCER_ROLE,
    "notifier": NOTIFIER_ROLE,
}
"""The processes (``budget <name>``) that connect as a role of their own, and that role."""

_OWN: Mapping[str, tuple[str, ...]] = {
    # sign-in inserts a session and sweeps old ones; sign-out sets ended_at, nothing else
    API_ROLE: ("GRANT INSERT, DELETE, UPDATE (ended_at) ON console_sessions TO {role}",),
    # answers about spend, policies, alerts and reports: no session of the console's
    QUERY_ROLE: ("REVOKE ALL ON console_sessions FROM {role}",),
    # a check's hold; a release, an expiry or a settled hold's cleanup deletes it
    ENFORCER_ROLE: (
        "REVOKE ALL ON console_sessions FROM {role}",
        "GRANT INSERT, DELETE ON reservation_holds TO {role}",
    ),
    # a delivery's outcome, never what the alert says or where it goes; the console's feed
    NOTIFIER_ROLE: (
        "REVOKE ALL ON console_sessions FROM {role}",
        "GRANT UPDATE (status, attempts, last_error, next_attempt_at, failing_since, sent_at)"
        " ON alert_outbox TO {role}",
        "GRANT INSERT (alert_id, payload) ON alert_feed TO {role}",
    ),
}


async def grant_door_roles(conn: Connection) -> list[str]:
    """Grant each door role that exists what it needs in the current schema (reads of every
    table and view, now and later; its own writes; less where it needs less); returns
    those granted. Run as the role
    that owns the schema's tables and creates the later ones (the services' role)."""
    cursor = await conn.execute(
        "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) ORDER BY rolname",
        (sorted(set(DOOR_ROLES.values())),),
    )
    present = [str(row[0]) for row in await cursor.fetchall()]
    missing = sorted(set(DOOR_ROLES.values()) - set(present))
    if missing:
        log.warning(
            "PostgreSQL has no role %s: nothing granted to it (docs/operations.md,"
            " The database passwords)",
            ", ".join(missing),
        )
    async with conn.transaction():
        schema = await _current_schema(conn)
        for role in present:
            names = {"role": sql.Identifier(role), "schema": sql.Identifier(schema)}
            for statement in (
                "GRANT CONNECT ON DATABASE {database} TO {role}",
                "GRANT USAGE ON SCHEMA {schema} TO {role}",
                "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
                # what this role (the owner) creates later: projection versions, their views
                "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {role}",
                *_OWN.get(role, ()),
            ):
                database = sql.Identifier(conn.info.dbname)
                await conn.execute(sql.SQL(statement).format(database=database, **names))
    return present


async def _current_schema(conn: Connection) -> str:
    row = await (await conn.execute("SELECT current_schema()")).fetchone()
    if row is None or row[0] is None:
        raise RuntimeError("the database connection has no schema to create tables in")
    return str(row[0])
