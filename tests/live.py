"""A running product for HTTP and browser tests: every worker and service of ``budget up``
as real processes on the session's NATS and PostgreSQL (their own subject prefix and
schema), the HTTP service on a free port, and an admin key.

One stack serves a whole test module; tests keep out of each other's way with their own
users, projects and policy ids.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from budget.config import Settings
from events import ApiRole, Topology
from services.api.keys import first_admin_key
from services.database_roles import DOOR_ROLES
from services.ops import nats_client, prepare
from services.stack import STACK_WORKERS, default_worker_command

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "LiveStack", "free_port", "live_stack"]

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium, which Playwright drives (its own browser download cannot work here)."""
# Headless as root, and no calls home: a closed network refuses them, many at a time.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LiveStack:
    base_url: str
    admin_key: str
    settings: Settings
    data_dir: Path
    log_dir: Path
    _start: Callable[[str], None] = field(repr=False)

    def start(self, name: str) -> None:
        """Start ``name`` (a worker or service of ``budget up``) that the stack left out."""
        self._start(name)

    def client(self, key: str | None = None, **options: object) -> httpx.Client:
        """An HTTP client on the stack, sending ``key`` (default: the admin key)."""
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        options.setdefault("timeout", 30)
        return httpx.Client(base_url=self.base_url, headers=headers, **options)  # type: ignore[arg-type]

    def new_key(self, role: ApiRole, name: str | None = None) -> str:
        with self.client() as http:
            answer = http.post(
                "/api/v1/keys", json={"name": name or f"{role.value}-test", "role": role.value}
            )
        answer.raise_for_status()
        key: str = answer.json()["key"]
        return key

    def logs(self) -> str:
        """Everything every process of the stack has written so far."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*")))


def _wait_ready(url: str, within: float, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        dead = {n: p.returncode for n, p in procs.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"stack processes exited while starting: {dead}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the HTTP service at {url} was not ready within {within}s")


def _wait_key_works(base_url: str, key: str, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        answer = httpx.get(
            base_url + "/api/v1/policies", headers={"Authorization": f"Bearer {key}"}
        )
        if answer.status_code == 200:
            return
        time.sleep(0.1)
    raise RuntimeError("the first admin key was not applied by the api_keys worker")


def live_stack(
    nats_url: str,
    database_url: str,
    workdir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    role_urls: Mapping[str, str] | None = None,
    workers: Sequence[str] = STACK_WORKERS,
    before: Callable[[Topology], Awaitable[None]] | None = None,
) -> Iterator[LiveStack]:
    """Generator for a fixture: start, yield the stack, stop every process. ``role_urls``:
    the database URL of a network door's role (``services.database_roles``), by role name,
    which that door's process connects with instead of ``database_url``. ``workers``: the
    processes started at once (``LiveStack.start`` starts others later); ``before``: run
    before the database is migrated (what an older release left, for an upgrade test)."""
    prefix = f"t{secrets.token_hex(5)}"
    settings = Settings(nats_url=nats_url, database_url=database_url, subject_prefix=prefix)
    topology = Topology(prefix=prefix)
    data_dir = workdir / "data"
    log_dir = workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    key_file = data_dir / "admin.key"

    async def setup() -> None:
        if before is not None:
            await before(topology)
        await prepare(nats_url, database_url, settings)
        async with nats_client(nats_url) as nc:
            await first_admin_key(nc.jetstream(), topology, key_file)

    asyncio.run(setup())
    port = free_port()
    env = {
        **os.environ,
        "BUDGET_NATS_URL": nats_url,
        "BUDGET_DATABASE_URL": database_url,
        "BUDGET_SUBJECT_PREFIX": prefix,
        "BUDGET_DATA_DIR": str(data_dir),
        "BUDGET_SPOOL_DIR": str(data_dir / "spool"),
        "BUDGET_API_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str) -> None:
        own = (role_urls or {}).get(DOOR_ROLES.get(name, ""))
        with (log_dir / f"{name}.log").open("wb") as log:
            procs[name] = subprocess.Popen(
                default_worker_command(name),
                cwd=ROOT,
                env=env if own is None else {**env, "BUDGET_DATABASE_URL": own},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    try:
        for name in workers:
            start(name)
        base_url = f"http://127.0.0.1:{port}"
        _wait_ready(base_url, 60, procs)
        admin_key = key_file.read_text().strip()
        _wait_key_works(base_url, admin_key, 30)
        yield LiveStack(base_url, admin_key, settings, data_dir, log_dir, start)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
