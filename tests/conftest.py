"""Shared fixtures: real NATS JetStream and PostgreSQL, and per-test isolation on top of them.

Session-scoped servers (see ``tests/servers.py`` for where they come from):

- ``nats_url: str``      a JetStream-enabled NATS server
- ``database_url: str``  a PostgreSQL database (libpq URI, ``postgresql://...``)
- ``door_database_urls: dict[str, str]``  the network doors' roles on it, by role name

Per test:

- ``topology: events.Topology``  a fresh subject prefix, hence fresh stream names
- ``pg_schema_url: str``         ``database_url`` whose connections use a fresh schema
  (``options=-csearch_path=<schema>``, ``pg_schema``), dropped afterwards
- ``door_schema_urls: dict[str, str]`` the network doors' roles on that schema, by role name
- ``embedded_nats: EmbeddedNats`` a private NATS server to kill/restart in fault tests
- ``embedded_postgres: EmbeddedPostgres`` a private PostgreSQL to restart in fault tests
- ``server_tmp_path: Path``       a temp dir an embedded PostgreSQL may live in (``tmp_path``
  may not: pytest re-chmods its base dir 0700, locking out the ``pgserver`` user)

Per module:

- ``stack: LiveStack``  every worker and service running (``tests/live.py``), the HTTP
  service on a free port, an admin key; its own subject prefix and schema
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from hypothesis import settings

# tests/ is on sys.path under pytest's default import mode; make sure of it for the others.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from events import Topology
from services.embedded import EmbeddedNats, EmbeddedPostgres

from live import LiveStack, live_stack
from servers import (
    Provided,
    create_schema,
    drop_schema,
    provide_nats,
    provide_postgres,
    schema_name_for,
    server_tmpdir,
    with_search_path,
)

log = logging.getLogger("tests.servers")

# CI (``.ci/run`` sets HYPOTHESIS_PROFILE=ci): the same examples on every run, so a
# submission is judged by its own change; elsewhere each run explores new ones.
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def _announce(config: pytest.Config, line: str) -> None:
    log.warning(line)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line(f"[servers] {line}")


@pytest.fixture(scope="session")
def _session_servers_dir() -> Iterator[Path]:
    path = server_tmpdir("session")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def nats_url(request: pytest.FixtureRequest, _session_servers_dir: Path) -> Iterator[str]:
    provided = provide_nats(_session_servers_dir)
    _announce(request.config, provided.describe("NATS"))
    try:
        yield provided.url
    finally:
        provided.close()


@pytest.fixture(scope="session")
def _postgres(request: pytest.FixtureRequest, _session_servers_dir: Path) -> Iterator[Provided]:
    provided = provide_postgres(_session_servers_dir)
    _announce(request.config, provided.describe("PostgreSQL"))
    try:
        yield provided
    finally:
        provided.close()


@pytest.fixture(scope="session")
def database_url(_postgres: Provided) -> str:
    return _postgres.url


@pytest.fixture(scope="session")
def door_database_urls(_postgres: Provided) -> dict[str, str]:
    """The URL of each network door's database role (``services.database_roles``) on the
    ``database_url`` server: none when that server has none and would not let us make them."""
    return _postgres.role_urls


@pytest.fixture
def server_tmp_path() -> Iterator[Path]:
    """Like ``tmp_path``, but usable as (a parent of) an embedded PostgreSQL data directory."""
    path = server_tmpdir("fn")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def topology() -> Topology:
    return Topology(prefix=f"t{uuid4().hex[:10]}")


@pytest.fixture
def pg_schema(request: pytest.FixtureRequest, database_url: str) -> Iterator[str]:
    schema = schema_name_for(request.node.name)
    create_schema(database_url, schema)
    try:
        yield schema
    finally:
        drop_schema(database_url, schema)


@pytest.fixture
def pg_schema_url(database_url: str, pg_schema: str) -> str:
    return with_search_path(database_url, pg_schema)


@pytest.fixture
def door_schema_urls(door_database_urls: dict[str, str], pg_schema: str) -> dict[str, str]:
    """``door_database_urls`` on ``pg_schema_url``'s schema: the roles the network doors
    connect as, which ``prepare`` grants their privileges there."""
    return {role: with_search_path(url, pg_schema) for role, url in door_database_urls.items()}


@pytest.fixture
def embedded_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats", stop_timeout=5.0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def embedded_postgres(server_tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(server_tmp_path / "postgres", database="budget_test").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest,
    nats_url: str,
    database_url: str,
    door_database_urls: dict[str, str],
) -> Iterator[LiveStack]:
    """A module's own stack; a module's ``STACK_ENV`` (``BUDGET_*`` settings) configures it.
    The network doors connect as their own roles, as under ``budget up``, when the server
    has them."""
    schema = schema_name_for(f"stack_{request.module.__name__}")
    create_schema(database_url, schema)
    workdir = server_tmpdir("stack")
    extra_env = getattr(request.module, "STACK_ENV", None)
    roles = {role: with_search_path(url, schema) for role, url in door_database_urls.items()}
    try:
        yield from live_stack(
            nats_url,
            with_search_path(database_url, schema),
            workdir,
            extra_env=extra_env,
            role_urls=roles,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        drop_schema(database_url, schema)
