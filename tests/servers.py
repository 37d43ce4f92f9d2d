"""Where the integration tests get NATS JetStream and PostgreSQL from (see DESIGN.md, Tests).

In order of preference:

1. ``BUDGET_TEST_NATS_URL`` / ``BUDGET_TEST_DATABASE_URL`` when set (each independently);
2. testcontainers (``nats:2.11 -js``, ``postgres:16``) when a Docker engine answers;
3. the embedded servers of ``services.embedded`` under a temporary directory.

``BUDGET_TEST_SERVERS=embedded`` (or ``docker``) skips the Docker probe (or insists on Docker).
"""

from __future__ import annotations

import importlib
import os
import re
import secrets
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from services.database_roles import DOOR_ROLES
from services.embedded import EmbeddedNats, EmbeddedPostgres

__all__ = [
    "DATABASE_ENV",
    "NATS_ENV",
    "SERVERS_ENV",
    "Provided",
    "create_schema",
    "docker_available",
    "door_roles",
    "drop_schema",
    "provide_nats",
    "provide_postgres",
    "schema_name_for",
    "server_tmpdir",
    "with_search_path",
]

NATS_ENV = "BUDGET_TEST_NATS_URL"
DATABASE_ENV = "BUDGET_TEST_DATABASE_URL"
SERVERS_ENV = "BUDGET_TEST_SERVERS"

NATS_IMAGE = "nats:2.11"
POSTGRES_IMAGE = "postgres:16"


@dataclass
class Provided:
    """A server URL, where it came from (``env``, ``testcontainers``, ``embedded``), and how to
    let it go at the end of the session."""

    url: str
    source: str
    close: Callable[[], None] = field(default=lambda: None)
    role_urls: dict[str, str] = field(default_factory=dict)
    """PostgreSQL only: the URL of each network door's role (``services.database_roles``),
    where the server has them or lets us make them."""

    def describe(self, what: str) -> str:
        return f"{what}: {self.url} (from {self.source})"


@cache
def docker_available(timeout: float = 1.0) -> bool:
    """True when a Docker engine answers a ping within ``timeout``; never raises."""
    choice = os.environ.get(SERVERS_ENV, "").strip().lower()
    if choice == "embedded":
        return False
    if choice == "docker":
        return True
    try:
        docker: Any = importlib.import_module("docker")
        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def provide_nats(workdir: Path) -> Provided:
    url = os.environ.get(NATS_ENV)
    if url:
        return Provided(url=url, source=f"${NATS_ENV}")
    if docker_available():
        from testcontainers.community.nats import NatsContainer

        container: Any = NatsContainer(NATS_IMAGE, jetstream=True).start()
        return Provided(url=container.nats_uri(), source="testcontainers", close=container.stop)
    server = EmbeddedNats(workdir / "nats").start()
    return Provided(url=server.url, source="embedded", close=server.stop)


def provide_postgres(workdir: Path) -> Provided:
    url = os.environ.get(DATABASE_ENV)
    if url:
        return Provided(url=url, source=f"${DATABASE_ENV}", role_urls=door_roles(url))
    if docker_available():
        from testcontainers.community.postgres import PostgresContainer

        container: Any = PostgresContainer(POSTGRES_IMAGE, driver=None).start()
        url = container.get_connection_url()
        return Provided(
            url=url, source="testcontainers", close=container.stop, role_urls=door_roles(url)
        )
    data_dir = workdir / "postgres"
    server = EmbeddedPostgres(data_dir, database="budget_test", cleanup_mode="delete").start()

    def close() -> None:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)

    roles = {role: server.url_for("budget_test", role=role) for role in DOOR_ROLES.values()}
    return Provided(url=server.url, source="embedded", close=close, role_urls=roles)


def door_roles(url: str) -> dict[str, str]:
    """The network doors' roles on the server ``url`` connects to, as ``budget up``'s
    embedded server has them: made (with new passwords) when ``url``'s role may make
    roles, else none."""
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        if not (row and row[0]):
            return {}
        urls = {}
        for role in DOOR_ROLES.values():
            password = secrets.token_urlsafe(24)
            exists = conn.execute("SELECT FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
            conn.execute(
                sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )
            parts = urlsplit(url)
            host = parts.netloc.rpartition("@")[2]
            netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{host}"
            urls[role] = urlunsplit(parts._replace(netloc=netloc))
    return urls


def server_tmpdir(label: str) -> Path:
    """A fresh directory for server data, outside pytest's ``basetemp``.

    As root, the embedded PostgreSQL runs as the ``pgserver`` user, which must traverse the
    parents of its data directory. Every pytest session start re-chmods
    ``/tmp/pytest-of-<user>`` to 0700, so a concurrent run (another terminal, CI shard) would
    lock it out mid-test. The caller removes the directory.
    """
    return Path(tempfile.mkdtemp(prefix=f"budget-test-{label}-"))


# -- per-test PostgreSQL schemas -------------------------------------------------------------

_NOT_IDENT = re.compile(r"[^a-z0-9_]+")


def schema_name_for(test_name: str) -> str:
    """``t_<test name, sanitised>_<8 hex>``: readable, unique, under PostgreSQL's 63 bytes."""
    stem = _NOT_IDENT.sub("_", test_name.lower()).strip("_")[:40]
    return f"t_{stem}_{uuid.uuid4().hex[:8]}"


def with_search_path(url: str, schema: str) -> str:
    """``url`` with ``options=-csearch_path=<schema>`` added to its query string.

    Works for libpq/psycopg URIs and for SQLAlchemy ``postgresql+psycopg://`` URLs alike (both
    percent-decode the query and hand ``options`` to the server at connection start).
    Existing ``options`` are kept.
    """
    base, _, query = url.partition("?")
    params = [p for p in query.split("&") if p]
    option = f"-csearch_path={schema}"
    kept: list[str] = []
    for param in params:
        key, _, value = param.partition("=")
        if key == "options":
            option = f"{unquote(value)} {option}"
        else:
            kept.append(param)
    kept.append("options=" + quote(option, safe=""))
    return f"{base}?{'&'.join(kept)}"


def _libpq(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"postgresql://{rest}" if sep and scheme.startswith("postgres") else url


def create_schema(database_url: str, schema: str) -> None:
    with psycopg.connect(_libpq(database_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def drop_schema(database_url: str, schema: str) -> None:
    """Drop with a lock timeout: a test that leaked an open transaction must not hang the run."""
    try:
        with psycopg.connect(_libpq(database_url), autocommit=True) as conn:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    except psycopg.Error as exc:
        warnings.warn(f"could not drop test schema {schema}: {exc}", stacklevel=1)
