"""The ``budget up`` running on a data directory, as its ``stack.json`` shows it: what a
command that tells an operator where the servers are (``budget doctor``) compares its own
configuration with."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from budget.server_urls import nats_servers
from projections.db import libpq_url

__all__ = ["RunningStack", "running_stack"]

_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclass(frozen=True)
class RunningStack:
    pid: int
    data_dir: Path
    nats_url: str
    database_url: str

    @property
    def runs(self) -> str:
        return f"`budget up` (pid {self.pid}, data {self.data_dir})"

    @property
    def nats_log(self) -> Path:
        return self.data_dir / "nats" / "nats-server.log"

    @property
    def postgres_log(self) -> Path:
        return self.data_dir / "postgres" / "log"

    def nats_login(self, user: str) -> str:
        """The variables that connect a shell as the stack's NATS ``user``."""
        password = self.data_dir / "credentials" / f"nats-{user}.password"
        return f"BUDGET_NATS_USER={user} BUDGET_NATS_PASSWORD_FILE={shlex.quote(str(password))}"

    def serves_nats(self, url: str) -> bool:
        """Whether ``url`` (one or a comma-separated list) names this stack's NATS."""
        return any(_nats_address(u) == _nats_address(self.nats_url) for u in nats_servers(url))

    def serves_database(self, url: str) -> bool:
        """Whether ``url`` names this stack's PostgreSQL server and database."""
        return _database_address(url) == _database_address(self.database_url)


def running_stack(data_dir: Path) -> RunningStack | None:
    """The stack running on ``data_dir``: the one ``stack.json`` names, while the process
    that wrote it lives and still holds the directory's lock (its pid in ``stack.lock``);
    None when none runs there or its files cannot be read."""
    data_dir = Path(data_dir).absolute()
    try:
        state = json.loads((data_dir / "stack.json").read_text())
        holder = int((data_dir / "stack.lock").read_text().strip())
        pid, nats_url, database_url = state["pid"], state["nats_url"], state["database_url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid != holder or not _alive(pid):
        return None  # a stack killed without cleaning up left them
    return RunningStack(pid, data_dir, str(nats_url), str(database_url))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _nats_address(url: str) -> tuple[str, int | None]:
    """Host and port, the loopback's names as one: ``localhost:4222`` is ``127.0.0.1:4222``."""
    url = url.strip()
    try:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        host, port = (parts.hostname or "").lower(), parts.port or 4222
    except ValueError:
        return url, None
    return ("127.0.0.1" if host in _LOOPBACK else host), port


def _database_address(url: str) -> tuple[str, str, str] | None:
    """Host (or socket directory), port and database; None for a URL libpq cannot read."""
    try:
        params = conninfo_to_dict(libpq_url(url))
    except (ValueError, psycopg.Error):
        return None
    host = str(params.get("host") or "")
    return (
        "127.0.0.1" if host in _LOOPBACK else host,
        str(params.get("port") or "5432"),
        str(params.get("dbname") or ""),
    )
